//! Work on several partitions' engines at once. Each engine is a deterministic function of its
//! own state and its own events (engine/mod.rs), so partitions are independent: the loop hands
//! each job one engine (`&mut`, disjoint), runs the jobs on up to `processing.threads` threads,
//! and gets the results back in the jobs' order. Everything that talks to Kafka stays on the
//! loop's thread, before and after; only the engines' computation (the step model's waves,
//! decisions, deep credit, the changelog's encoding) is spread.

/// Runs `f` on every job and returns the results in the jobs' order. With more than one thread
/// and more than one job, jobs are spread over the threads by weight (largest first, each to the
/// least loaded thread); the calling thread runs one share itself. A panic in a job is resumed
/// on the calling thread.
pub(super) fn fan_out<J: Send, R: Send>(threads: usize, jobs: Vec<(usize, J)>, f: impl Fn(J) -> R + Sync) -> Vec<R> {
    let n = threads.min(jobs.len());
    if n <= 1 {
        return jobs.into_iter().map(|(_, job)| f(job)).collect();
    }
    let mut order: Vec<(usize, usize, J)> = jobs.into_iter().enumerate().map(|(i, (w, job))| (w, i, job)).collect();
    order.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut shares: Vec<(usize, Vec<(usize, J)>)> = (0..n).map(|_| (0, Vec::new())).collect();
    for (w, i, job) in order {
        let least = shares.iter_mut().min_by_key(|(load, _)| *load).expect("n >= 2");
        least.0 += w.max(1);
        least.1.push((i, job));
    }
    let f = &f;
    let run = move |share: Vec<(usize, J)>| share.into_iter().map(|(i, job)| (i, f(job))).collect::<Vec<_>>();
    let mut done: Vec<(usize, R)> = std::thread::scope(|s| {
        let mut shares = shares.into_iter().map(|(_, share)| share);
        let own = shares.next().expect("n >= 2");
        let spawned: Vec<_> = shares.map(|share| s.spawn(move || run(share))).collect();
        let mut done = run(own);
        for handle in spawned {
            match handle.join() {
                Ok(part) => done.extend(part),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        done
    });
    done.sort_unstable_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, r)| r).collect()
}

/// `processing.threads`: 0 means one per core the process may use.
pub(super) fn threads(configured: usize) -> usize {
    match configured {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_come_back_in_the_jobs_order_whatever_the_threads() {
        for threads in [1, 2, 3, 8] {
            let jobs: Vec<(usize, u64)> = (0..7u64).map(|i| ((i as usize * 5) % 7, i)).collect();
            let out = fan_out(threads, jobs, |i| (i, std::thread::current().id()));
            assert_eq!(out.iter().map(|(i, _)| *i).collect::<Vec<_>>(), (0..7).collect::<Vec<_>>());
            let used: std::collections::HashSet<_> = out.iter().map(|(_, t)| *t).collect();
            assert_eq!(used.len(), threads.min(7), "{threads} threads");
        }
    }

    #[test]
    fn each_job_gets_its_own_mutable_state() {
        let mut engines = vec![0u64; 5];
        let jobs: Vec<(usize, (usize, &mut u64))> = engines.iter_mut().enumerate().map(|(i, e)| (1, (i, e))).collect();
        let sums = fan_out(2, jobs, |(i, e)| {
            *e += i as u64 * 10;
            *e
        });
        assert_eq!(sums, vec![0, 10, 20, 30, 40]);
        assert_eq!(engines, vec![0, 10, 20, 30, 40]);
    }

    #[test]
    fn a_panic_in_a_job_reaches_the_caller() {
        let r = std::panic::catch_unwind(|| fan_out(2, vec![(1, 0), (1, 1)], |i| if i == 1 { panic!("job {i}") } else { i }));
        assert!(r.is_err());
    }

    #[test]
    fn zero_threads_means_the_cores() {
        assert!(threads(0) >= 1);
        assert_eq!(threads(3), 3);
    }
}
