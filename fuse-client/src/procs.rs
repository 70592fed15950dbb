//! What the kernel tells us about the processes behind FUSE requests.

/// The process (thread group) id of kernel task `tid`, from `/proc/<tid>/status`; `None` when
/// the task no longer exists or the file cannot be read. FUSE requests carry the id of the
/// calling *task* (thread), so two threads of one process carry different ids.
pub fn tgid(tid: u32) -> Option<u32> {
    if tid == 0 {
        return None;
    }
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_map_to_their_process() {
        let me = std::process::id();
        assert_eq!(tgid(me), Some(me));
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            tx.send(unsafe { libc::gettid() } as u32).unwrap();
            done_rx.recv().unwrap();
        });
        let live = rx.recv().unwrap();
        assert_ne!(live, me);
        assert_eq!(
            tgid(live),
            Some(me),
            "a live thread belongs to this process"
        );
        done_tx.send(()).unwrap();
        t.join().unwrap();
        assert_eq!(tgid(0), None);
    }
}
