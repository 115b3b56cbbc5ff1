//! A runtime made before fork() is not the child's: the child makes its own
//! (nginx's master forks its workers after init_by_lua).

use std::rc::Rc;

use crate::runtime::Runtime;

#[test]
fn child_after_fork_gets_a_fresh_runtime() {
    let parent = Runtime::current();
    assert!(
        Rc::ptr_eq(&parent, &Runtime::current()),
        "same process: same runtime"
    );
    assert!(
        super::in_child(|| Runtime::existing().is_none() && !Rc::ptr_eq(&parent, &Runtime::current())),
        "child saw the parent's runtime"
    );
    assert!(
        Rc::ptr_eq(&parent, &Runtime::current()),
        "the parent keeps its runtime"
    );
}

#[test]
fn a_child_runtime_starts_with_its_vms_mailbox_emptied() {
    use crate::mailbox::Posted;
    use crate::vm::VmRuntime;

    let vm = VmRuntime::default();
    let parent = vm.get();
    let mailbox = vm.mailbox_for_test();
    mailbox.get();
    let entry = Posted {
        id: 123.0,
        num: 1.0,
        ptr: std::ptr::null(),
        len: 0,
        kind: crate::ffi::KIND_BOOLEAN,
    };
    assert!(mailbox.post(5, entry));
    assert!(
        super::in_child(|| !Rc::ptr_eq(&parent, &vm.get()) && vm.mailbox_for_test().id(5) == 0.0),
        "the child's runtime found the parent's entry"
    );
    assert_eq!(mailbox.id(5), 123.0, "the parent's runtime keeps its entries");
    assert!(Rc::ptr_eq(&parent, &vm.get()));
}
