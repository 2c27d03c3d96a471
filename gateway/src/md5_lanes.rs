//! The MD5 of upload bodies (S3's ETag), several bodies at once.
//!
//! Measured: MD5 was 37% of the server's CPU under 4 MiB PUTs (issue 8's bench), and one
//! MD5 stream cannot go faster than its 64-byte blocks chain (about 350 MB/s with md-5's
//! assembly on this machine, 500 MB/s with md5-many's scalar code). Independent bodies can
//! share SIMD lanes: md5-many's multi-buffer kernels hash 8 (AVX2) or 16 (AVX-512) of them
//! together at about 2.5 GB/s in all here. Under load, many requests hold a whole body at
//! once, so one hashing thread takes every body waiting and hashes them together; a body
//! alone is hashed on its own stream, and a small one on the caller's thread, where a hop
//! would cost more than the hash.

use std::thread;

use crossbeam_channel::{Receiver, Sender};
use hyper::body::Bytes;
use tokio::sync::oneshot;

/// Bodies up to this size are hashed on the caller's thread.
const INLINE_MAX_BYTES: usize = 16 << 10;

/// Bodies hashed together at most: the widest lanes (AVX-512) take 16.
const BATCH_MAX: usize = 16;

struct Job {
    body: Bytes,
    digest: oneshot::Sender<[u8; 16]>,
}

/// A handle on the hashing thread; clones share it. The thread ends when the last handle
/// is dropped.
#[derive(Clone, Debug)]
pub struct Md5Lanes {
    jobs: Sender<Job>,
}

impl Md5Lanes {
    /// Starts the hashing thread.
    pub fn start() -> std::io::Result<Md5Lanes> {
        let (jobs, queue) = crossbeam_channel::unbounded();
        thread::Builder::new().name("kiseki-md5".to_owned()).spawn(move || hash_jobs(&queue))?;
        Ok(Md5Lanes { jobs })
    }

    /// The MD5 of `body`.
    pub async fn digest(&self, body: Bytes) -> [u8; 16] {
        if body.len() <= INLINE_MAX_BYTES {
            return md5_many::md5(&body);
        }
        let (digest, answer) = oneshot::channel();
        let job = Job { body: body.clone(), digest };
        if self.jobs.send(job).is_err() {
            return md5_many::md5(&body);
        }
        // A hashing thread that died (it cannot panic on any input; this is for an
        // allocation failure) leaves the hash to the caller.
        match answer.await {
            Ok(digest) => digest,
            Err(_) => md5_many::md5(&body),
        }
    }
}

/// Takes every job waiting (at most `BATCH_MAX`) and hashes them together, until every
/// handle is gone.
fn hash_jobs(queue: &Receiver<Job>) {
    let lanes = md5_many::Md5Many::new();
    let mut batch: Vec<Job> = Vec::with_capacity(BATCH_MAX);
    let mut digests = [[0u8; 16]; BATCH_MAX];
    while let Ok(first) = queue.recv() {
        batch.push(first);
        batch.extend(queue.try_iter().take(BATCH_MAX - 1));
        if let [job] = batch.as_slice() {
            digests[0] = md5_many::md5(&job.body);
        } else {
            let bodies: Vec<&[u8]> = batch.iter().map(|job| &job.body[..]).collect();
            lanes.hash_many(&bodies, &mut digests[..batch.len()]);
        }
        for (job, digest) in batch.drain(..).zip(digests) {
            // A request that went away no longer waits for its digest.
            let _ = job.digest.send(digest);
        }
    }
}

#[cfg(test)]
mod tests {
    use md5::{Digest as _, Md5};

    use super::*;

    fn body(len: usize, seed: u8) -> Bytes {
        (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect::<Vec<u8>>().into()
    }

    fn reference(body: &[u8]) -> [u8; 16] {
        Md5::digest(body).into()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bodies_hashed_together_match_md5_at_every_length_class() {
        let lanes = Md5Lanes::start().expect("the hashing thread");
        // Empty, inline, at and across block and lane boundaries, and large.
        let lengths = [0, 1, 55, 56, 64, 4096, INLINE_MAX_BYTES, INLINE_MAX_BYTES + 1, 65_536 + 7];
        let mut asks = Vec::new();
        for round in 0..3u8 {
            for (n, len) in lengths.iter().chain(&[1 << 18, (1 << 20) + 13]).enumerate() {
                let body = body(*len, round.wrapping_mul(17).wrapping_add(n as u8));
                let lanes = lanes.clone();
                asks.push(tokio::spawn(async move {
                    let digest = lanes.digest(body.clone()).await;
                    (digest, reference(&body), body.len())
                }));
            }
        }
        let mut hashed = 0;
        for ask in asks {
            let (digest, expected, len) = ask.await.expect("a digest");
            assert_eq!(digest, expected, "MD5 of {len} bytes");
            hashed += 1;
        }
        assert_eq!(hashed, 3 * (lengths.len() + 2));
    }

    #[tokio::test]
    async fn a_request_that_went_away_leaves_the_thread_hashing_for_the_others() {
        let lanes = Md5Lanes::start().expect("the hashing thread");
        let big = body(INLINE_MAX_BYTES * 4, 3);
        let (digest, gone) = oneshot::channel();
        drop(gone);
        lanes.jobs.send(Job { body: big.clone(), digest }).expect("the queue is open");
        assert_eq!(lanes.digest(big.clone()).await, reference(&big));
    }
}
