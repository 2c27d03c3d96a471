//! SPDK bdev backend (feature `spdk`). Being written; see the helper's brief.
