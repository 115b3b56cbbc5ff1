//! Kept blocks (`blocks.rs`): a box's memory is reused for the next box of
//! its layout, and each value is dropped once.

use std::rc::Rc;

use crate::blocks::Blocks;

/// Holds a count of the values alive; 64 bytes and a pointer.
struct Counted {
    _bytes: [u64; 8],
    _alive: Rc<()>,
}

fn counted(i: u64, alive: &Rc<()>) -> Counted {
    Counted {
        _bytes: [i; 8],
        _alive: Rc::clone(alive),
    }
}

#[test]
fn a_kept_block_is_reused_for_the_same_layout() {
    let blocks = Blocks::default();
    let a = blocks.boxed([1u64; 8]);
    let at = &*a as *const [u64; 8] as usize;
    blocks.keep(a);
    assert_eq!(blocks.len(), 1);
    // another layout: a new allocation, the block stays
    let small = blocks.boxed(7u8);
    assert_eq!(blocks.len(), 1);
    // the same layout, another type: the kept block
    let b = blocks.boxed([2i64; 8]);
    assert_eq!(&*b as *const [i64; 8] as usize, at);
    assert_eq!(*b, [2; 8], "written, not left over");
    assert_eq!(blocks.len(), 0);
    blocks.keep(b);
    blocks.keep(small);
    assert_eq!(blocks.len(), 2);
}

#[test]
fn each_value_is_dropped_once() {
    let alive = Rc::new(());
    {
        let blocks = Blocks::default();
        let boxes: Vec<Box<Counted>> = (0..10).map(|i| blocks.boxed(counted(i, &alive))).collect();
        assert_eq!(Rc::strong_count(&alive), 11);
        for b in boxes {
            blocks.keep(b);
        }
        assert_eq!(Rc::strong_count(&alive), 1, "dropped when kept");
        assert_eq!(blocks.len(), 10);
        // (a trait object is kept by its value's layout)
        let dynamic: Box<dyn std::any::Any> = blocks.boxed(counted(0, &alive));
        blocks.keep(dynamic);
        assert_eq!(Rc::strong_count(&alive), 1);
        assert_eq!(blocks.len(), 10);
    }
    assert_eq!(Rc::strong_count(&alive), 1);
}

#[test]
fn a_layout_keeps_a_bounded_number_of_blocks_and_others_keep_theirs() {
    use crate::blocks::{MAX_LAYOUTS, MAX_PER_LAYOUT};
    let blocks = Blocks::default();
    let many: Vec<Box<[u64; 8]>> = (0..MAX_PER_LAYOUT + 10)
        .map(|i| blocks.boxed([i as u64; 8]))
        .collect();
    for b in many {
        blocks.keep(b);
    }
    assert_eq!(blocks.len(), MAX_PER_LAYOUT, "the rest were freed");
    // other layouts find room, up to MAX_LAYOUTS of them in all
    blocks.keep(blocks.boxed([0u8; 24]));
    assert_eq!(blocks.len(), MAX_PER_LAYOUT + 1);
    for n in 100..100 + MAX_LAYOUTS {
        blocks.keep(vec![0u8; n].into_boxed_slice());
    }
    assert_eq!(blocks.len(), MAX_PER_LAYOUT + 1 + (MAX_LAYOUTS - 2));
}
