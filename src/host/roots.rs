//! Which plugin (root context) a stream belongs to, without a per-stream context in the VM.
//!
//! Envoy enters the VM once for each callback a module exports. The SDK's dispatcher needs
//! three entries per stream: `proxy_on_context_create` (it builds the stream's context),
//! `proxy_on_request_headers`, and `proxy_on_delete` (it drops the context again). claimguard
//! keeps no state per stream (a request paused for keys is a waiter in `host/flow.rs`, found
//! by its context id), so it does not export `proxy_on_delete` and its own dispatcher keeps
//! only what `proxy_on_context_create` says: which root the stream was created under. Envoy
//! creates a stream's context at the start of its request headers
//! (`Context::decodeHeaders` calls `onCreate()` and then `onRequestHeaders`), so one slot, the
//! last stream created, is enough; a stream that never reaches its headers (an earlier filter
//! answered it) leaves nothing behind.
//!
//! Without `proxy_on_delete`, a root context is not told when Envoy deletes it (a plugin
//! config replaced or removed). Every root sets a tick, and Envoy stops a deleted root's
//! timer: a root that has stopped ticking while another one ticks on is gone, and is
//! dropped (with its caches) by [`Roots::tick`].

/// A root silent for this long while another root ticked on (and had itself ticked within
/// [`LIVE_MS`]) has been deleted by the host: 300 of the 200 ms ticks missed.
pub const SILENT_MS: u64 = 60_000;
/// How recent the ticking root's own previous tick must be for the silence of others to
/// count: after the whole worker stood still (a stopped process, a suspended machine), every
/// root looks silent and none is dropped.
pub const LIVE_MS: u64 = 5_000;

/// The root contexts of one VM, by context id, and the stream created last.
#[derive(Debug)]
pub struct Roots<T> {
    entries: Vec<Entry<T>>,
    /// (stream context id, root context id) of the last `proxy_on_context_create`.
    created: Option<(u32, u32)>,
}

#[derive(Debug)]
struct Entry<T> {
    id: u32,
    root: T,
    /// When this root last ticked (or was added, before its first tick).
    last_tick_ms: u64,
}

impl<T> Default for Roots<T> {
    fn default() -> Self {
        Roots {
            entries: Vec::new(),
            created: None,
        }
    }
}

impl<T: Clone> Roots<T> {
    /// The root with this id, if known.
    pub fn get(&self, id: u32) -> Option<T> {
        self.entries.iter().find(|e| e.id == id).map(|e| e.root.clone())
    }

    /// The root with this id, made with `make` if it is new.
    pub fn get_or_add(&mut self, id: u32, now_ms: u64, make: impl FnOnce() -> T) -> T {
        if let Some(root) = self.get(id) {
            return root;
        }
        let root = make();
        self.entries.push(Entry {
            id,
            root: root.clone(),
            last_tick_ms: now_ms,
        });
        root
    }

    /// Forgets a root (its configuration was refused: the host discards it).
    pub fn remove(&mut self, id: u32) -> Option<T> {
        let at = self.entries.iter().position(|e| e.id == id)?;
        Some(self.entries.swap_remove(at).root)
    }

    /// `proxy_on_context_create` for a stream: remembers which root it belongs to.
    pub fn created(&mut self, context_id: u32, root_id: u32) {
        self.created = Some((context_id, root_id));
    }

    /// The root of a stream seeing its request headers: the one it was created under, or,
    /// when the host did not say (it always does, just before), the VM's only root. With
    /// several roots and no word from the host, None: the caller fails closed.
    pub fn root_of_stream(&self, context_id: u32) -> Option<T> {
        match self.created {
            Some((c, root)) if c == context_id => self.get(root),
            _ => match self.entries.as_slice() {
                [only] => Some(only.root.clone()),
                _ => None,
            },
        }
    }

    /// Root `id` ticked at `now_ms`. Returns the roots that have stopped ticking (the host
    /// deleted them), removed from the registry, for the caller to drop.
    pub fn tick(&mut self, id: u32, now_ms: u64) -> Vec<T> {
        let Some(at) = self.entries.iter().position(|e| e.id == id) else {
            return Vec::new();
        };
        let previous = self.entries.get(at).map_or(now_ms, |e| e.last_tick_ms);
        if let Some(e) = self.entries.get_mut(at) {
            e.last_tick_ms = now_ms;
        }
        if now_ms.saturating_sub(previous) > LIVE_MS {
            return Vec::new();
        }
        let mut gone = Vec::new();
        let mut i = 0;
        while i < self.entries.len() {
            let silent = self
                .entries
                .get(i)
                .is_some_and(|e| e.id != id && now_ms.saturating_sub(e.last_tick_ms) > SILENT_MS);
            if silent {
                gone.push(self.entries.swap_remove(i).root);
            } else {
                i += 1;
            }
        }
        gone
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_belongs_to_the_root_it_was_created_under() {
        let mut r = Roots::default();
        r.get_or_add(1, 0, || "a");
        r.get_or_add(2, 0, || "b");
        r.created(10, 2);
        assert_eq!(r.root_of_stream(10), Some("b"));
        r.created(11, 1);
        assert_eq!(r.root_of_stream(11), Some("a"));
        // A stream the host did not announce, with two roots: nobody's (fail closed).
        assert_eq!(r.root_of_stream(10), None);
        // Created under a root the VM does not know: nobody's either.
        r.created(12, 7);
        assert_eq!(r.root_of_stream(12), None);
    }

    #[test]
    fn with_one_root_every_stream_is_its() {
        let mut r = Roots::default();
        assert_eq!(r.root_of_stream(5), None::<&str>);
        r.get_or_add(1, 0, || "a");
        assert_eq!(r.root_of_stream(5), Some("a"));
    }

    #[test]
    fn get_or_add_makes_a_root_once() {
        let mut r = Roots::default();
        let mut made = 0;
        for _ in 0..3 {
            r.get_or_add(1, 0, || {
                made += 1;
                "a"
            });
        }
        assert_eq!((made, r.len()), (1, 1));
        assert_eq!(r.remove(1), Some("a"));
        assert!(r.is_empty());
        assert_eq!(r.remove(1), None);
    }

    #[test]
    fn a_root_that_stopped_ticking_is_dropped_by_one_that_ticks_on() {
        let mut r = Roots::default();
        r.get_or_add(1, 0, || "old");
        r.get_or_add(2, 0, || "new");
        let mut now = 0;
        // Both tick for a while: nobody is dropped.
        while now < 120_000 {
            now += 200;
            assert!(r.tick(1, now).is_empty());
            assert!(r.tick(2, now).is_empty());
        }
        // The host deletes root 1: its ticks stop; root 2 ticks on.
        let stopped = now;
        let mut dropped = Vec::new();
        while dropped.is_empty() {
            now += 200;
            dropped = r.tick(2, now);
        }
        assert_eq!(dropped, vec!["old"]);
        assert!(now - stopped > SILENT_MS && now - stopped <= SILENT_MS + 200);
        assert_eq!(r.get(1), None);
        assert_eq!(r.root_of_stream(99), Some("new"));
    }

    #[test]
    fn nobody_is_dropped_after_the_whole_worker_stood_still() {
        let mut r = Roots::default();
        r.get_or_add(1, 0, || "a");
        r.get_or_add(2, 0, || "b");
        assert!(r.tick(1, 200).is_empty());
        assert!(r.tick(2, 200).is_empty());
        // Ten minutes of nothing (a stopped process), then both tick again.
        assert!(r.tick(1, 600_200).is_empty(), "root 1's own last tick is old too");
        assert!(r.tick(2, 600_200).is_empty());
        assert!(r.tick(1, 600_400).is_empty(), "root 2 ticked again");
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn a_root_that_never_ticked_counts_from_when_it_was_added() {
        let mut r = Roots::default();
        r.get_or_add(1, 0, || "ticks");
        let mut now = 0;
        while now < 100_000 {
            now += 200;
            assert!(r.tick(1, now).is_empty());
        }
        r.get_or_add(2, now, || "added late");
        now += 200;
        assert!(r.tick(1, now).is_empty(), "a new root is not silent yet");
        assert_eq!(r.len(), 2);
        // An unknown root's tick changes nothing.
        assert!(r.tick(9, now).is_empty());
    }
}
