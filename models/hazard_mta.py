"""Additive-hazard attribution (survival MTA) fitted by EM on the whole observation time.

The model (Zhang, Wei & Ren, KDD 2014; Ji & Wang, AAAI 2017 "AMTA", with a customer frailty):

    lambda_i(t) = M(t) * ( b_i + sum_{touches j of i's current journey} e_{g(j)}(age_j) )

- b_i: the customer's own propensity, learned from behaviour other than the touch being credited:
  a log-linear (Poisson GLM) mean in the customer's own-visit rate (visits no click landed, without
  a purchase) times a gamma frailty; each conversion's baseline is left-one-out (from the
  customer's other conversions); with `sensors` (train.py's default) the frailty is shared with
  the customer's clicks before their first purchase decision: each click group's count is Poisson
  with a base rate plus c_k x (the customer's hazard), c_k learned, so that the clicks of groups
  whose rate follows the customer's propensity (intent-driven channels) are evidence of b_i
  instead of causes of the conversions (see `sensor_counts` and models/README.md); with
  `sensor_timing` (train.py's default, `--hazard-sensors timed`) impressions and e-mail opens join
  them, each with its c_k learned from *when* its touches arrive within each customer
  (`timing_kappa`: a delivery that follows intent arrives when the modelled hazard is high), not
  from how many a customer got, which also follows how much was delivered and what it caused;
- e_g(age) >= 0: the effect of a touch of group g = (channel, event_type) at age `age`, a
  non-negative combination of piecewise-linear "hat" functions of u = log1p(hours) / log1p(720)
  (the contract's `age` input), so its shape (immediate, delayed, long tail or none) is learned;
- M(t): multipliers that scale every component alike (time of day, open cart and its age, time
  since the previous purchase, time since the last site event): they carry the visit, cart and
  post-purchase dynamics, so that touches that land visits, happen while a cart is open
  (retargeting, cart reminders) or after a purchase are not credited with them;
- a purchase spends the touches before it (the processor's journey); touches between the start of
  the buying visit and the purchase are spent by it and never at risk;
- the conversion is dated at the **start of the visit in which it happens** (the customer's
  decision precedes the visit that carries it out; the visit is the purchase's session_id, or the
  events before it without a 30-minute gap, plus the click that landed it). The time between that
  start and the purchase is not at risk. This dating is what keeps navigational clicks (brand
  search, coupon clicks) from looking like causes; the kernel's value at short ages is then
  *learned* from the touches that were not followed by a purchase in their own visit.

Estimation: the log-likelihood sum_events log lambda(t_e) - integral lambda dt, with the integral
estimated by case-base sampling (controls on a stratified grid over each customer's time at
risk; Hanley & Miettinen 2009). EM over the latent cause of each conversion (baseline or one
touch basis term; the superposition of independent Poisson processes) gives closed-form updates:
    e_gk <- e_gk * sum_e X_e,gk / lambda_e  /  sum_controls w M X_c,gk
    b_i  <- (expected baseline conversions of i + alpha) / (sum_controls of i  w M + alpha / mu_i)
    mu_i = exp(Z_i theta): two Newton steps of the Poisson GLM per iteration
    m_fl <- events at level l / sum_controls at level l of w M A / m_fl
with alpha (the frailty's shape) by the method of moments.

Credit: the exported ONNX graph computes P = 1 - exp(-(mu + sum_i e_i) * 1 day). The processor's
removal effect P(all) - P(all but i) = exp(-H)(exp(e_i) - 1) is proportional to e_i (to first
order): each touch's share of the modelled incremental hazard at the conversion.

The design (conversions, control points, multiplier levels, post-visit windows, sensor counts) is
built by hazard_design.py; the names callers use are re-exported here.
"""
from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp

import tsdata as D
from hazard_design import (  # the design's names that the fit uses, and those callers use as H.*
    KNOT_HOURS, KNOTS_U, K, NE, NG, HOUR_BINS, SINCE_PURCHASE_D, N_LEVELS, basis, build, last_purchase_before,
    relevel, mirror_design, _mirror_matrix, sensor_state, sensor_counts, sensor_touch_rows, SENSOR_AGE_D, DELIVERED_TYPES,
)


def customer_covariates(data, covariates: str):
    nC = data["n_customers"]
    cols = [np.ones(nC)]
    if covariates in ("own", "all") and "own_rate" in data:
        cols.append(np.log(data["own_rate"] + 0.02))
    if covariates.startswith("own+") and "touch_rate" in data:
        # diagnostic only: the named channels' touch rates (e.g. "own+sms"), to measure how much a
        # customer-level sensor of the propensity could do; never a default (it names channels)
        cols.append(np.log(data["own_rate"] + 0.02))
        for name in covariates[4:].split("+"):
            cols.append(np.log(data["touch_rate"][:, D.CH_INDEX[name]] + 0.02))
    if covariates == "all" and "touch_rate" in data:
        tr = data["touch_rate"]
        for k in range(tr.shape[1]):
            if (tr[:, k] > 0).mean() > 0.01:
                x = np.log(tr[:, k] + 0.02)
                cols.append(x)
    Z = np.stack(cols, 1)
    Z[:, 1:] = (Z[:, 1:] - Z[:, 1:].mean(0)) / (Z[:, 1:].std(0) + 1e-9)
    return Z


def fit(data, iters: int = 200, use_multipliers: bool = True, frailty: bool = True, log=print, tol=1e-7,
        covariates: str = "own", mirror: bool = False, mirror_weight: bool = True, mirror_cap: float = 50.0,
        sensors: bool = False, sensor_touch_term: bool = True, sensor_states: bool = True,
        sensor_clicks_only: bool = False, sensor_standalone: bool = False, loo: bool = True, alpha_fixed: float | None = None,
        sensor_base_diurnal: bool = False, sensor_groups: list | None = None, sensor_timing: bool = False,
        timing_states: str = "full", timing_every: int = 10, level_step: bool = False,
        timing_start: int | None = None, timing_rounds: int | None = None,
        timing_damping: float | None = None, timing_scale: str = "b", delivered_covariates: bool = False):
    """level_step: the baselines' common level chosen by the conversions alone each iteration (a
    parameter-expansion step, see below); default off. timing_start: iterations of the plain fit
    (timed groups without c_k) before their kappa is first estimated from its time course (default
    timing_every). timing_rounds: how many times kappa is estimated (every timing_every iterations)
    before it is frozen, so that the EM can converge (default: until the last iteration).
    timing_damping: d in (0, 1]; each re-estimate of kappa after the first moves it only part way,
    kappa <- (1 - d) kappa_prev + d kappa_new, so that the EM can settle (default None: the new
    estimate as is). timing_scale: the scale of kappa's x = T / scale: "b" (default) each customer's
    baseline b_i; "mu" the population mean baseline mu, held at its value at kappa's first estimate
    (a lab variant, see `timing_kappa`). delivered_covariates: each delivered group's touches before
    the customer's first purchase decision, over what a base rate per visit-recency x age state
    expects for the customer, as covariates of the baseline's GLM mean (a lab variant; default off)."""
    E, C = data["e"], data["c"]
    Xe, Xc = E["X"], C["X"]
    N_LEVELS = tuple(data.get("n_levels", globals()["N_LEVELS"]))
    use_mirror = mirror and "mirror" in data
    if use_mirror:
        # the mirror term: its own NG*K columns after the causal ones, never credited
        PUR = 2  # index of the since-purchase multiplier in N_LEVELS
        ones = np.ones(data.get("n_levels", N_LEVELS)[PUR])

        def with_mirror(m_pur):
            mp = m_pur if mirror_weight else ones
            Xne = _mirror_matrix(data["mirror"]["e"], Xe.shape[0], mp, mirror_cap)
            Xnc = _mirror_matrix(data["mirror"]["c"], Xc.shape[0], mp, mirror_cap)
            return sp.hstack([E["X"], Xne]).tocsr(), sp.hstack([C["X"], Xnc]).tocsr()
        Xe, Xc = with_mirror(ones)
        mirror_pur = ones.copy()
    XeT, XcT = Xe.T.tocsr(), Xc.T.tocsr()
    w = C["w"]
    nC = data["n_customers"]
    ce, cc = E["cust"], C["cust"]
    n_e = len(ce)
    # which basis columns are ever exposed
    exposure = XcT @ w
    active = exposure > 0
    mu = n_e / w.sum()
    b = np.full(nC, mu)
    # the customer's baseline: log mu_i = Z_i theta, Z = customer-level behaviour over the whole
    # log (own-visit rate, touch rate per channel), a Poisson GLM fitted in the M-step
    Z = customer_covariates(data, covariates)
    theta = np.zeros(Z.shape[1])
    theta[0] = math.log(mu)
    mu_i = np.exp(Z @ theta)
    n_tot = np.bincount(ce, minlength=nC).astype(np.float64)
    r0_prev = np.zeros(n_e)
    Ei_prev = np.bincount(cc, weights=w, minlength=nC)
    S = np.where(active, mu * 0.1, 0.0)
    m = [np.ones(n) for n in N_LEVELS]
    alpha = 1.0
    ll_prev = -np.inf
    # sensors: every touch group's touches before the customer's first purchase decision, modelled
    # as Poisson with rate a_k + c_k * D(t) * (b_i + T_i(t)) (a base rate plus a part that follows
    # the customer's current hazard: its baseline and the modelled effects of its touches, D the
    # time-of-day multiplier); the part c_k D b_i is evidence of b_i, added to its gamma posterior.
    # a_k, c_k are learned; a group whose touches do not follow the hazard gets c_k ~ 0.
    use_sensors = sensors and frailty and "sensor" in data
    SB = np.zeros(nC)
    SD = np.zeros(nC)
    if use_sensors:
        sen = data["sensor"]
        gk = sen["groups"]
        Nk = sen["Ns" if sensor_standalone else "N"]
        Nk = Nk if sensor_states else Nk.sum(2, keepdims=True)
        if sensor_clicks_only or sensor_standalone:
            # only the customer's own actions (clicks); impressions and opens are delivered to them
            keep = np.isin(gk % NE, [D.ET_INDEX["click"], D.ET_INDEX["email_click"]])
            gk, Nk = gk[keep], Nk[:, keep]
        if sensor_groups is not None:
            # diagnostic only (names groups): the sensors restricted to these "channel/event_type" groups
            names = np.array([f"{D.CHANNELS[g // NE]}/{D.EVENT_TYPES[g % NE]}" for g in gk])
            keep = np.isin(names, sensor_groups)
            gk, Nk = gk[keep], Nk[:, keep]
        NS = Nk.shape[2]
        pre_c = C["t"] < sen["first"][cc]
        st_all = sensor_state(C["lv"][3], (C["t"] - sen["start"][cc]) / D.DAY_MS)  # each control row's state
        st_c = st_all if sensor_states else np.zeros(len(cc), dtype=np.int64)
        cs = cc.astype(np.int64) * NS + st_c
        Tpre = np.bincount(cs, weights=w * pre_c, minlength=nC * NS).reshape(nC, NS)
        a_k = 0.5 * Nk.sum(0) / np.maximum(Tpre.sum(0), 1e-12)  # [G, NS]
        c_k = 0.5 * Nk.sum((0, 2)) / max(float(mu * Tpre.sum()), 1e-12)  # [G]
    use_timing = use_sensors and sensor_timing and "sensor_rows" in data
    if use_timing:
        # each sensor group's c_k from *when* its touches arrive within each customer (the modelled
        # hazard at its touches against its time course in between), not from how many a customer
        # gets: a count cannot tell a group that follows the customer's propensity from one whose
        # effect raises it (see `timing_kappa`)
        srow = data["sensor_rows"]
        gmap = np.full(NG, -1)
        gmap[gk] = np.arange(len(gk))
        s_g = gmap[sen["groups"][srow["g"]]]
        keep_s = s_g >= 0
        Xs, s_c, s_g = srow["X"][keep_s], srow["cust"][keep_s], s_g[keep_s]
        s_st, c_st = srow["st"][keep_s], st_all
        if timing_states == "age":
            s_st, c_st = s_st % (len(SENSOR_AGE_D) + 1), c_st % (len(SENSOR_AGE_D) + 1)
        pre_idx = np.flatnonzero(pre_c)
        kappa = np.zeros(len(gk))
        Ntot = Nk.sum((0, 2))
        # which groups' c_k the timing gives ("delivered": impressions and opens only; the clicks' from
        # their counts, as without it)
        timed = (np.isin(gk % NE, DELIVERED_TYPES) if sensor_timing == "delivered"
                 else np.ones(len(gk), dtype=bool))
        c_k = np.where(timed, 0.0, c_k)
    if delivered_covariates and use_sensors:
        # across customers: a delivered group's pre-decision count against its expectation given the
        # customer's time in each visit-recency x age state (retargeting follows visits, prospecting
        # fades), as evidence of the propensity in the baseline's prior mean, not as a sensor
        n_full = sen["N"]
        nsf = n_full.shape[2]
        t_full = np.bincount(cc.astype(np.int64) * nsf + st_all, weights=w * pre_c, minlength=nC * nsf).reshape(nC, nsf)
        has_t = t_full.sum(1) > 0
        extra_z = []
        for j, g in enumerate(sen["groups"]):
            if g % NE not in DELIVERED_TYPES:
                continue
            count = n_full[:, j, :].sum(1)
            if (count[has_t] > 0).mean() < 0.01:
                continue
            expect = t_full @ (n_full[:, j, :].sum(0) / np.maximum(t_full.sum(0), 1e-12))
            z = np.where(has_t, np.log((count + 0.5) / (expect + 0.5)), 0.0)
            extra_z.append((z - z[has_t].mean()) / (z[has_t].std() + 1e-9) * has_t)
        if extra_z:
            Z = np.c_[Z, np.stack(extra_z, 1)]
            theta = np.r_[theta, np.zeros(len(extra_z))]
            log(f"  delivered covariates: {len(extra_z)}")
    t0_timing = timing_every if timing_start is None else timing_start  # first iteration with the timed groups
    min_its = 30  # no convergence before the timed groups have joined and, with timing_rounds, kappa is frozen
    if sensor_timing and (timing_start is not None or timing_rounds is not None):
        min_its = max(30, t0_timing + timing_every * max(2, timing_rounds or 0))
    for it in range(iters):
        if use_mirror and mirror_weight and use_multipliers and it > 0 and it % 10 == 0 and \
                np.max(np.abs(np.log(m[PUR] / mirror_pur))) > 0.01:
            # the mirror term's weights follow the since-purchase multiplier as it is learned
            mirror_pur = m[PUR].copy()
            Xe, Xc = with_mirror(mirror_pur)
            XeT, XcT = Xe.T.tocsr(), Xc.T.tocsr()
        Mc = np.ones(len(w))
        Me = np.ones(n_e)
        if use_multipliers:
            for f in range(len(N_LEVELS)):
                Mc *= m[f][C["lv"][f]]
                Me *= m[f][E["lv"][f]]
        # leave-one-out: an event's baseline is learned from the customer's other conversions
        be = (b[ce] if not frailty or not loo else
              (np.bincount(ce, weights=r0_prev, minlength=nC)[ce] - r0_prev + SB[ce] + alpha)
              / (Ei_prev[ce] + SD[ce] + alpha / mu_i[ce]))
        Ae = be + Xe @ S
        Ac = b[cc] + Xc @ S
        ll = float(np.sum(np.log(Me * Ae + 1e-300)) - np.sum(w * Mc * Ac))
        if not np.isfinite(ll) or not np.all(np.isfinite(S)):
            # a degenerate multiplier level (e.g. every conversion in one level) can diverge: keep the
            # last finite parameters
            log(f"  EM stopped at {it}: non-finite likelihood; the last finite parameters are kept")
            S, b, m, mu, theta = last_ok
            break
        last_ok = (S.copy(), b.copy(), [x.copy() for x in m], mu, theta.copy())
        # E-step / M-step for the touch effects
        num = S * (XeT @ (1.0 / Ae))
        den = XcT @ (w * Mc)
        S = np.where(den > 0, num / np.maximum(den, 1e-300), 0.0)
        # baseline
        r0 = be / Ae
        r0_prev = r0
        n0 = np.bincount(ce, weights=r0, minlength=nC)
        Ei = np.bincount(cc, weights=w * Mc, minlength=nC)
        Ei_prev = Ei
        mu = n0.sum() / Ei.sum()
        if use_sensors:
            Dc = (m[0][C["lv"][0]] if use_multipliers else 1.0) * w * pre_c
            Dis = np.bincount(cs, weights=Dc, minlength=nC * NS).reshape(nC, NS)
            if sensor_touch_term == "others":
                # the hazard of every touch but the group's own: a group's count cannot be evidence
                # of a hazard its own touches make (heavily delivered groups would explain themselves)
                TTall = Dc * (Xc @ S)
                TTk = np.empty((nC, len(gk), NS))
                for j, g in enumerate(gk):
                    own = np.zeros_like(S)
                    cols = slice(g * K, (g + 1) * K)
                    own[cols] = S[cols]
                    TTk[:, j, :] = np.bincount(cs, weights=TTall - Dc * (Xc @ own), minlength=nC * NS).reshape(nC, NS)
            elif sensor_touch_term:
                TTk = np.bincount(cs, weights=Dc * (Xc @ S), minlength=nC * NS).reshape(nC, 1, NS)
            else:
                TTk = np.zeros((nC, 1, NS))
            # the base rate over time weighted like the hazard's time of day (delivery has its hours too)
            Tb = Dis if sensor_base_diurnal else Tpre
            base = a_k[None, :, :] * Tb[:, None, :]
            hz = c_k[None, :, None] * (b[:, None, None] * Dis[:, None, :] + TTk)
            lam_k = np.maximum(base + hz, 1e-300)
            sbase = Nk * base / lam_k
            sb = Nk * (c_k[None, :, None] * b[:, None, None] * Dis[:, None, :]) / lam_k
            a_k = sbase.sum(0) / np.maximum(Tb.sum(0), 1e-12)
            hz_int = np.maximum(((b[:, None] * Dis)[:, None, :] + TTk).sum((0, 2)), 1e-12)
            c_count = (Nk - sbase).sum((0, 2)) / hz_int
            if use_timing and it < t0_timing:
                c_k = np.where(timed, 0.0, c_count)  # a plain fit first, so that the hazard's time course is the model's
            elif use_timing:
                if (it - t0_timing) % timing_every == 0 and (
                        timing_rounds is None or (it - t0_timing) // timing_every < timing_rounds):
                    Dc_all = (m[0][C["lv"][0]] if use_multipliers else 1.0) * w
                    if timing_scale == "mu":
                        # lab variant: x = T(t) / mu_fix, the touch hazard relative to the population's
                        # mean baseline (fixed at kappa's first estimate) instead of the customer's b_i.
                        # b_i enters the fit through kappa, so against b_i a larger kappa -> larger
                        # baselines -> smaller x -> larger next kappa (a loop); a fixed scale breaks it.
                        # kappa's meaning shifts: rate ~ (1 + kappa T / mu), i.e. delivery following
                        # the hazard of a customer at the mean baseline; a purely intent-driven delivery
                        # now has kappa = mu / b_i per customer (1 at the mean), no longer 1 for each.
                        if it == t0_timing:
                            mu_timing = mu
                        sc_s, sc_c = mu_timing, mu_timing
                    else:
                        sc_s, sc_c = b[s_c], b[cc[pre_idx]]
                    kappa_new = timing_kappa(Xs @ S / sc_s, s_c, s_g, s_st,
                                             (Xc @ S)[pre_idx] / sc_c, cc[pre_idx], Dc_all[pre_idx],
                                             c_st[pre_idx], len(gk), nC)
                    if timing_scale == "mu":
                        log(f"  kappa at {it} (scale mu {mu_timing:.4g}): " + ", ".join(
                            f"{D.CHANNELS[g // NE]}/{D.EVENT_TYPES[g % NE]} {x:.3f}"
                            for g, x, t in zip(gk, kappa_new, timed) if t))
                    if timing_damping is None:
                        kappa = kappa_new
                    else:
                        # damped: the first estimate as is, later ones only part way
                        kappa = (kappa_new if it == t0_timing else
                                 (1.0 - timing_damping) * kappa + timing_damping * kappa_new)
                        log(f"  kappa at {it} (new -> damped): " + ", ".join(
                            f"{D.CHANNELS[g // NE]}/{D.EVENT_TYPES[g % NE]} {x:.3f} -> {y:.3f}"
                            for g, x, y, t in zip(gk, kappa_new, kappa, timed) if t))
                c_k = np.where(timed, np.minimum(kappa, 1.0) * Ntot / hz_int, c_count)
            else:
                c_k = c_count
            SB = sb.sum((1, 2))
            SD = Dis.sum(1) * c_k.sum()
        for _ in range(2):  # damped Newton steps of the Poisson GLM: n0_i ~ Poisson(E_i exp(Z_i theta))
            lam = np.exp(np.clip(Z @ theta, -50, 50)) * (Ei + SD)
            grad = Z.T @ (n0 + SB - lam) - 1e-3 * np.r_[0.0, theta[1:]]
            hess = (Z * lam[:, None]).T @ Z + 1e-3 * np.eye(len(theta))
            try:
                step_ = np.linalg.solve(hess, grad)
            except np.linalg.LinAlgError:
                step_ = np.zeros_like(theta)
            if not np.all(np.isfinite(step_)):
                step_ = np.zeros_like(theta)
            nrm = np.abs(step_).max()
            theta = theta + (step_ if nrm <= 1.0 else step_ / nrm)
        mu_i = np.exp(np.clip(Z @ theta, -50, 50))
        if frailty:
            # gamma frailty around the covariate mean; shape alpha by the method of moments on the
            # customers' conversion counts: Var n_i = m_i + (mu_i E_i)^2 / alpha
            ex = mu_i * Ei
            Ti = np.bincount(cc, weights=w * Mc * (Xc @ S), minlength=nC)
            mi = ex + Ti
            v = np.sum((n_tot - mi) ** 2 - mi)
            inv_alpha = min(max(v / max(np.sum(ex ** 2), 1e-12), 0.02), 20.0)
            alpha = 1.0 / inv_alpha if alpha_fixed is None else alpha_fixed
            b = (n0 + SB + alpha) / (Ei + SD + alpha / mu_i)
        else:
            b = mu_i.copy()
        level = float(n0.sum() / max(float(b @ Ei), 1e-300))  # conversions' scale of the baselines (1 = consistent)
        if level_step and use_sensors and frailty:
            # parameter expansion (Liu, Rubin & Wu 1998): the sensors' likelihood depends on c_k x b_i
            # (up to their touch term), so a common scale s of the baselines, with c_k / s and the
            # prior mean mu_i x s, leaves it and the frailty prior unchanged; the conversions alone
            # choose s (their expected baseline conversions against the baselines' integral). A lab
            # variant (models/README.md, "The baseline's level ..."): it tests whether a sensor with
            # a large c_k, which dominates each b_i's posterior, holds the baselines' level away from
            # the conversions'.
            s_lv = min(max(level, 0.5), 2.0)
            b = b * s_lv
            mu_i = mu_i * s_lv
            theta[0] += math.log(s_lv)
            c_k = c_k / s_lv
            SD = SD / s_lv
        # multipliers
        if use_multipliers:
            Ac = b[cc] + Xc @ S
            for f in range(len(N_LEVELS)):
                Mc = np.ones(len(w))
                for g in range(len(N_LEVELS)):
                    if g != f:
                        Mc *= m[g][C["lv"][g]]
                cnt = np.bincount(E["lv"][f], minlength=N_LEVELS[f])
                den = np.bincount(C["lv"][f], weights=w * Mc * Ac, minlength=N_LEVELS[f])
                mf = np.where(den > 0, (cnt + 0.5) / (den + 0.5 / np.maximum(m[f], 1e-9)), 1.0)
                # scale: time-weighted mean 1 over the controls (the baseline carries the level)
                ref = np.average(mf, weights=np.bincount(C["lv"][f], weights=w, minlength=N_LEVELS[f]) + 1e-12)
                m[f] = mf / ref
        if it % 25 == 0 or it == iters - 1:
            log(f"  EM {it}: loglik {ll:.2f}, mean baseline {mu:.5f}/day, frailty shape {alpha:.2f}, "
                f"baseline's share of the conversions {n0.sum() / n_e:.3f}, level {level:.3f}")
        if abs(ll - ll_prev) < tol * abs(ll) and it > min_its:
            log(f"  EM converged at {it}: loglik {ll:.2f}")
            break
        ll_prev = ll
    extra = {"x_theta": [round(float(x), 3) for x in theta], "x_alpha": round(float(alpha), 3),
             "x_baseline_conversions": round(float(n0.sum() / n_e), 4), "x_level": round(level, 4)}
    if use_timing:
        extra["x_kappa"] = {f"{D.CHANNELS[g // NE]}/{D.EVENT_TYPES[g % NE]}": round(float(x), 3)
                            for g, x in zip(gk, kappa)}
    if use_sensors:
        extra["x_sensors"] = {f"{D.CHANNELS[g // NE]}/{D.EVENT_TYPES[g % NE]}": round(float(c), 3)
                              for g, c in zip(gk, c_k)}
    n_causal = E["X"].shape[1]
    if use_mirror:
        extra["S_mirror"] = S[n_causal:].reshape(NG, K)
        S = S[:n_causal]
    if n_causal > NG * K:
        # post-visit delivered touches' kernels (build(post_visit_hours=...)): fitted, never credited
        extra["S_post_visit"] = S[NG * K:].reshape(NG, K)
        S = S[:NG * K]
    return {**extra, "S": S.reshape(NG, K), "mu": float(mu), "alpha": float(alpha), "multipliers": [x.tolist() for x in m],
            "baseline_glm_theta": theta.tolist(),
            "iterations": it + 1, "loglik": ll, "events": int(n_e), "controls": int(len(w)),
            "b_event": np.asarray(be, dtype=np.float64)}


def timing_kappa(xs, s_c, s_g, s_st, xc, c_c, c_w, c_st, n_groups: int, nC: int, rounds: int = 4):
    """Per sensor group, how much its delivery follows the customer's modelled hazard *within* the
    customer: its touches' rate is gamma_i D(t) a(state) (1 + kappa x(t)), x = T(t) / b_i the
    modelled touch effects relative to the customer's baseline (a purely intent-driven delivery,
    rate c (b_i + T), has kappa = 1; a delivery that ignores intent has 0; one with a base rate in
    between). The conditional likelihood given each customer's count removes gamma_i, so kappa is
    learned from the timing alone (the touches at high x against the time spent at high x), never
    from how many touches a customer gets. xs: x at each touch (group s_g, customer s_c, state s_st);
    xc, c_c, c_w, c_st: x, customer, weight (time x time of day) and state of the control rows
    before each customer's first purchase decision."""
    out = np.zeros(n_groups)
    ns = int(max(s_st.max(initial=0), c_st.max(initial=0))) + 1
    covered = np.bincount(c_c, minlength=nC) > 0  # customers with time at risk before the decision
    for j in range(n_groups):
        sel = s_g == j
        x, cu, st = xs[sel], s_c[sel], s_st[sel]
        x, cu, st = x[covered[cu]], cu[covered[cu]], st[covered[cu]]
        n_i = np.bincount(cu, minlength=nC).astype(np.float64)
        has = n_i[c_c] > 0
        xcj, ccj, wj, stj = xc[has], c_c[has], c_w[has], c_st[has]
        n_st = np.bincount(st, minlength=ns).astype(np.float64)
        a = np.ones(ns)
        kap = 0.0
        for _ in range(rounds):
            lam = np.bincount(ccj, weights=wj * a[stj] * (1 + kap * xcj), minlength=nC)
            per = (n_i / np.maximum(lam, 1e-300))[ccj] * wj * (1 + kap * xcj)
            a = n_st / np.maximum(np.bincount(stj, weights=per, minlength=ns), 1e-300)
            A = np.bincount(ccj, weights=wj * a[stj], minlength=nC)
            B = np.bincount(ccj, weights=wj * a[stj] * xcj, minlength=nC)
            ok = n_i > 0
            nA, nB, nn = A[ok], B[ok], n_i[ok]

            def ll(k):
                return float(np.sum(np.log1p(k * x)) - np.sum(nn * np.log(np.maximum(nA + k * nB, 1e-300))))
            lo, hi = 0.0, 20.0
            g = (math.sqrt(5) - 1) / 2
            c1, c2 = hi - g * (hi - lo), lo + g * (hi - lo)
            f1, f2 = ll(c1), ll(c2)
            for _ in range(40):
                if f1 < f2:
                    lo, c1, f1 = c1, c2, f2
                    c2 = lo + g * (hi - lo)
                    f2 = ll(c2)
                else:
                    hi, c2, f2 = c2, c1, f1
                    c1 = hi - g * (hi - lo)
                    f1 = ll(c1)
            kap = 0.5 * (lo + hi)
            if ll(0.0) >= ll(kap):
                kap = 0.0
        out[j] = kap
    return out


def effects(S: np.ndarray, channel: np.ndarray, event_type: np.ndarray, age_u: np.ndarray):
    k, fr = basis(age_u)
    g = channel.astype(np.int64) * NE + event_type.astype(np.int64)
    kk = np.maximum(k, 0)
    v = S[g, kk] * (1 - fr) + S[g, np.minimum(kk + 1, K - 1)] * fr
    return np.where(k < 0, 0.0, v)


# ---------------------------------------------------------------------------------------------
# ONNX module (same contract as the classifiers)


def torch_module(S: np.ndarray, mu: float, horizon_days: float = 1.0):
    import torch
    import torch.nn as nn

    class HazardAttribution(nn.Module):
        """P(conversion) = 1 - exp(-(mu + sum_i e_{channel_i, event_type_i}(age_i)) * horizon):
        additive hazard; e is piecewise linear in the contract's age (hat functions at KNOTS_U)."""
        kind = "additive_hazard"

        def __init__(self):
            super().__init__()
            self.register_buffer("table", torch.tensor(S * horizon_days, dtype=torch.float32))  # [NG, K]
            self.register_buffer("knots", torch.tensor(KNOTS_U, dtype=torch.float32))
            left = np.concatenate([[KNOTS_U[0] - 1.0], KNOTS_U[:-1]])
            right = np.concatenate([KNOTS_U[1:], [KNOTS_U[-1] + 1e-6]])
            self.register_buffer("inv_l", torch.tensor(1.0 / (KNOTS_U - left), dtype=torch.float32))
            self.register_buffer("inv_r", torch.tensor(1.0 / (right - KNOTS_U), dtype=torch.float32))
            self.base = float(mu * horizon_days)
            # campaign_bucket and position are contract inputs this model does not use; a zero term keeps
            # them in the graph (Gather + Mul), so the input names stay those of the contract
            self.register_buffer("unused", torch.zeros(D.CAMPAIGN_BUCKETS, dtype=torch.float32))

        def forward(self, channel, event_type, campaign_bucket, age, position, mask):
            g = channel * NE + event_type  # [B, L]
            rows = self.table[g]  # [B, L, K]
            u = age.unsqueeze(-1)  # [B, L, 1]
            up = (u - self.knots) * self.inv_l + 1.0  # rising side
            dn = (self.knots - u) * self.inv_r + 1.0  # falling side
            hat = torch.relu(torch.minimum(up, dn).clamp(max=1.0))
            e = (rows * hat).sum(-1) * mask + self.unused[campaign_bucket] * position  # [B, L]
            h = e.sum(-1, keepdim=True) + self.base
            p = 1.0 - torch.exp(-h)
            att = e / (e.sum(-1, keepdim=True) + 1e-12)
            return p, att

    return HazardAttribution()
