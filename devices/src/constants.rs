//! Every limit of the device layer, with the reason it has its value.

/// The smallest unit Kiseki addresses on a device, and the alignment of every offset,
/// length and buffer address. 4 KiB is the page size, the block size of every filesystem we
/// run on, and a size every NVMe namespace accepts for O_DIRECT; a device whose logical block
/// is larger raises it.
pub const BLOCK_SIZE_MIN_BYTES: u32 = 4096;

/// Alignment of the DMA buffer pool's allocation. A page, so that every buffer the pool
/// hands out starts on a block boundary whatever the block size up to a page.
pub const BUFFER_ALIGNMENT_BYTES: usize = 4096;

/// Largest single I/O. io_uring takes a 32-bit length; 64 MiB keeps one request far below
/// it and below the largest chunk the engine writes.
pub const IO_SIZE_MAX_BYTES: u32 = 64 << 20;

/// Deepest queue one device (one ring) accepts. io_uring rings go to 32768 entries; beyond
/// a few thousand in flight a single NVMe queue gains nothing and the slot table only grows.
pub const QUEUE_DEPTH_MAX: u32 = 4096;

/// Registered buffers per ring: the kernel's limit for `IORING_REGISTER_BUFFERS`.
pub const REGISTERED_BUFFERS_MAX: u32 = 16384;

/// Pools of at least this size are mapped on this alignment and advised to use transparent
/// huge pages. A 1 MiB buffer inside one huge page is one physically contiguous segment, so
/// the block layer neither splits it (virtio-blk here takes 254 segments) nor stops merging
/// neighbours: measured on this class of machine, 1 MiB sequential reads went from 0.75x to
/// 1.2x fio and CPU per I/O fell to a third. Smaller pools stay on ordinary pages.
pub const HUGE_PAGE_BYTES: usize = 2 << 20;
