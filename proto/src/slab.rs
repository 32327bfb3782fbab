//! Connection storage for a worker loop: slots reused through a free list,
//! each with a generation so a stale timer or event for a reused slot is
//! recognised and ignored.

pub struct Slab<T> {
    slots: Vec<(u32, Option<T>)>,
    free: Vec<usize>,
    len: usize,
    /// Generation of a slot made anew: above every generation a slot
    /// dropped by `shrink` had, so stale keys for it never match.
    fresh: u32,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab {
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
            fresh: 0,
        }
    }
}

impl<T> Slab<T> {
    /// What one slot takes (an entry and its generation): the memory each
    /// open connection costs a worker while it idles.
    pub const SLOT_BYTES: usize = std::mem::size_of::<(u32, Option<T>)>();

    pub fn new() -> Slab<T> {
        Slab::default()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Insert, returning (slot, generation).
    pub fn insert(&mut self, v: T) -> (usize, u32) {
        self.len += 1;
        match self.free.pop() {
            Some(i) => {
                let s = &mut self.slots[i];
                s.0 = s.0.wrapping_add(1);
                s.1 = Some(v);
                (i, s.0)
            }
            None => {
                self.slots.push((self.fresh, Some(v)));
                (self.slots.len() - 1, self.fresh)
            }
        }
    }

    pub fn get_mut(&mut self, i: usize) -> Option<&mut T> {
        self.slots.get_mut(i).and_then(|s| s.1.as_mut())
    }

    /// The entry in slot `i` if it is still generation `gen`.
    pub fn get_gen(&mut self, i: usize, gen: u32) -> Option<&mut T> {
        self.slots
            .get_mut(i)
            .filter(|s| s.0 == gen)
            .and_then(|s| s.1.as_mut())
    }

    pub fn generation(&self, i: usize) -> u32 {
        self.slots.get(i).map_or(0, |s| s.0)
    }

    pub fn remove(&mut self, i: usize) -> Option<T> {
        let v = self.slots.get_mut(i)?.1.take()?;
        self.len -= 1;
        self.free.push(i);
        Some(v)
    }

    /// Whether slot `i` holds an entry of generation `gen`.
    pub fn is_live(&self, i: usize, gen: u32) -> bool {
        self.slots
            .get(i)
            .is_some_and(|s| s.0 == gen && s.1.is_some())
    }

    /// Give back the memory of the free slots at the end (after a burst of
    /// connections). Slots in use keep their index.
    pub fn shrink(&mut self) {
        while let Some((gen, None)) = self.slots.last() {
            self.fresh = self.fresh.max(gen.wrapping_add(1));
            self.slots.pop();
        }
        let n = self.slots.len();
        self.free.retain(|&i| i < n);
        self.slots.shrink_to_fit();
        self.free.shrink_to_fit();
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (usize, &mut T)> {
        self.slots
            .iter_mut()
            .enumerate()
            .filter_map(|(i, s)| s.1.as_mut().map(|v| (i, v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuse_bumps_generation() {
        let mut s = Slab::new();
        let (a, g) = s.insert(1);
        assert_eq!(s.remove(a), Some(1));
        let (b, g2) = s.insert(2);
        assert_eq!(a, b);
        assert_ne!(g, g2);
        assert!(s.get_gen(a, g).is_none());
        assert_eq!(s.get_gen(b, g2), Some(&mut 2));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn shrink_drops_free_tail_and_never_reissues_a_generation() {
        let mut s = Slab::new();
        let keys: Vec<_> = (0..4).map(|i| s.insert(i)).collect();
        s.remove(keys[1].0);
        s.remove(keys[3].0);
        s.remove(keys[2].0);
        s.shrink();
        assert_eq!(s.slots.len(), 1, "slots 1..3 were free at the end");
        assert_eq!(s.len(), 1);
        assert_eq!(s.get_gen(keys[0].0, keys[0].1), Some(&mut 0));
        let again: Vec<_> = (0..3).map(|i| s.insert(10 + i)).collect();
        for (i, g) in &again {
            assert!(*i >= 1);
            let old = keys.iter().find(|k| k.0 == *i).unwrap();
            assert_ne!(old.1, *g, "a stale key for slot {i} must not match");
            assert!(!s.is_live(old.0, old.1));
            assert!(s.is_live(*i, *g));
        }
    }
}
