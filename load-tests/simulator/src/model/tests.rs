use super::*;

fn model(extra: &str) -> Model {
    let w = World::from_toml_str(&format!("customers = 200\nconcurrency = 200\n{extra}")).unwrap();
    Model::new(w).unwrap()
}

#[test]
fn stepping_in_chunks_equals_running_through() {
    let m = model("");
    for idx in 0..40 {
        let mut a = CustomerSim::new(&m, idx, None, true);
        let mut taken = Vec::new();
        loop {
            a.advance_until_ready();
            match a.out.pop_front() {
                Some(e) => taken.push((e.ts, e.seq, e.etype)),
                None => break,
            }
        }
        let mut b = CustomerSim::new(&m, idx, None, true);
        while !b.finished {
            b.step();
        }
        let all: Vec<_> = b.out.iter().map(|e| (e.ts, e.seq, e.etype)).collect();
        assert_eq!(taken, all, "customer {idx}");
        assert!(all.windows(2).all(|w| w[0].0 <= w[1].0));
        let mut c = CustomerSim::new(&m, idx, None, false);
        c.run_to_end();
        assert_eq!(c.purchase_log, b.purchase_log);
    }
}

#[test]
fn kernels_peak_at_one() {
    let g = GroupSpec { size: 1.0, kind: KernelKind::Delayed, days: 3.0, decay: 0.0, coef: 0.0 };
    assert!((g.kernel(3.0) - 1.0).abs() < 1e-12);
    assert!(g.kernel(0.0) == 0.0 && g.kernel(1.0) < 1.0 && g.kernel(6.0) < 1.0);
    let g = GroupSpec { size: 1.0, kind: KernelKind::Exp, days: 2.0, decay: 0.0, coef: 0.0 };
    assert!((g.kernel(0.0) - 1.0).abs() < 1e-12 && (g.kernel(2.0) - 0.5).abs() < 1e-12);
}

#[test]
fn truth_shares_match_the_hazard() {
    // decide() checks in debug builds that the per-touch truth adds up to the simulated hazard.
    let m = model("");
    let mut n = 0;
    for idx in 0..100 {
        let mut s = CustomerSim::new(&m, idx, None, true);
        s.run_to_end();
        for c in &s.convs {
            let sum: f64 = c.touches.iter().map(|t| t.raw).sum::<f64>() + c.baseline_hazard;
            assert!((sum - c.total_hazard).abs() <= 1e-9 * c.total_hazard.max(1e-12));
            assert!(c.touches.iter().all(|t| t.ts <= c.ts && (t.ts <= c.decision_ts || t.raw == 0.0)));
            n += 1;
        }
    }
    assert!(n > 10);
}
