//! Per-layer key/value cache for incremental decoding.
//!
//! Buffers are preallocated to the generation's final length and written in place, so a decode
//! step appends one position without copying the prefix or re-running it.
use mf_core::Result;
use tch::{Kind, Tensor};

/// Keys and values of one attention layer: `[batch, heads, capacity, head_dim]`.
#[derive(Debug)]
pub struct LayerCache {
    k: Tensor,
    v: Tensor,
}

/// The cache of every layer, with the number of positions filled so far.
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<Option<LayerCache>>,
    len: usize,
    capacity: usize,
}

impl KvCache {
    /// An empty cache for `num_layers` layers that will hold up to `capacity` positions
    /// (it grows if exceeded).
    pub fn new(num_layers: usize, capacity: usize) -> Self {
        KvCache {
            layers: (0..num_layers).map(|_| None).collect(),
            len: 0,
            capacity: capacity.max(1),
        }
    }

    /// Positions already cached.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Stores `k`, `v` (`[batch, heads, new, head_dim]`) for `layer` at the current position
    /// and returns views of all keys and values so far.
    pub fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let new = k.size()[2] as usize;
        let end = self.len + new;
        let slot = &mut self.layers[layer];
        let needs_alloc = match slot {
            None => true,
            Some(c) => (c.k.size()[2] as usize) < end,
        };
        if needs_alloc {
            let cap = end
                .max(self.capacity)
                .max(slot.as_ref().map_or(0, |c| 2 * c.k.size()[2] as usize));
            self.capacity = self.capacity.max(cap);
            let (b, h, _, d) = k.size4()?;
            let alloc = |t: &Tensor| Tensor::zeros([b, h, cap as i64, d], (t.kind(), t.device()));
            let (nk, nv) = (alloc(k), alloc(v));
            if let Some(old) = slot.as_ref() {
                let filled = self.len as i64;
                nk.narrow(2, 0, filled).copy_(&old.k.narrow(2, 0, filled));
                nv.narrow(2, 0, filled).copy_(&old.v.narrow(2, 0, filled));
            }
            *slot = Some(LayerCache { k: nk, v: nv });
        }
        let c = slot.as_mut().expect("allocated above");
        c.k.narrow(2, self.len as i64, new as i64).copy_(k);
        c.v.narrow(2, self.len as i64, new as i64).copy_(v);
        Ok((c.k.narrow(2, 0, end as i64), c.v.narrow(2, 0, end as i64)))
    }

    /// Bytes of keys and values one cached position takes over all layers and the batch: what
    /// a decode step reads per position of history.
    pub fn bytes_per_position(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .map(|c| {
                let s = c.k.size();
                let per = (s[0] * s[1] * s[3]) as usize * c.k.kind().elt_size_in_bytes();
                2 * per
            })
            .sum()
    }

    /// Advances the filled length after every layer has appended `new` positions.
    pub fn advance(&mut self, new: usize) {
        self.len += new;
    }

    /// Reorders the batch dimension (beam search keeps the surviving beams' histories).
    pub fn reorder_cache(&mut self, beam_idx: &Tensor) {
        let idx = beam_idx.to_kind(Kind::Int64);
        for c in self.layers.iter_mut().flatten() {
            let idx = idx.to_device(c.k.device());
            c.k = c.k.index_select(0, &idx);
            c.v = c.v.index_select(0, &idx);
        }
    }
}
