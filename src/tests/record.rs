use crate::Record;

#[test]
fn push_appends_after_the_largest_integer_key() {
    let mut pushed = Record::new();
    pushed
        .set(1, "a")
        .set(1, "b")
        .set(0, "zero")
        .set(-5, "minus")
        .push("next");
    let mut set = Record::new();
    set.set(1, "a")
        .set(1, "b")
        .set(0, "zero")
        .set(-5, "minus")
        .set(2, "next");
    assert_eq!(pushed, set);

    let mut r = Record::new();
    r.push(1.0).push(2.0).set(10, "ten").push(11.0);
    let mut want = Record::new();
    want.set(1, 1.0).set(2, 2.0).set(10, "ten").set(11, 11.0);
    assert_eq!(r, want);
}
