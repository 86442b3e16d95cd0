"""The markdown tables evaluate.py prints and writes (evaluation.md) from its results dict."""
from __future__ import annotations

import alert_policy as AP


def pct(x):
    return f"{100 * x:.1f}%"


def markdown(r):
    lines = []
    if "step" in r:
        s = r["step"]
        lines += [f"### Journey step model: P(purchase within 7 days), events of {r['heldout']}", "",
                  f"{s['events_evaluated']} events sampled (purchase rate {pct(s['purchase_rate'])}).", "",
                  "| model | AUC | log-loss |", "|---|---|---|"]
        for k in ("gru_step_model", "lr_touch_counts_recency", "lr_touch_counts_recency_plus_event_features", "constant_rate"):
            lines.append(f"| {k} | {s[k]['auc']:.4f} | {s[k]['logloss']:.4f} |")
        v = s["expected_value"]
        a = s["abandon_head"]
        lines += ["", f"expected_value (90-day revenue): mean predicted {v['mean_predicted']:.2f} vs actual "
                  f"{v['mean_actual']:.2f}; MAE {v['mae']:.2f} (constant mean: {v['mae_constant_mean']:.2f}); "
                  f"Spearman {v['spearman']:.3f}. p_abandon on its labels: AUC {a['auc']:.4f}, log-loss "
                  f"{a['logloss']:.4f} (rate {pct(a['rate'])}, {a['labels']} labels).", ""]
    if "abandon" in r:
        a = r["abandon"]
        lines += [f"### Cart abandonment alerts (carts of {r['heldout']})", "",
                  f"{a['carts']} carts, {pct(a['abandoned_rate'])} abandoned; thresholds chosen on the carts of "
                  f"{a['selection_run']}.", "",
                  "| policy | precision | recall | F1 | alerts | median lead time (h) | mean lead time (h) |",
                  "|---|---|---|---|---|---|---|"]
        for k, m in a["table"].items():
            lt = f"{m['median_lead_time_hours']:.2f}" if m["median_lead_time_hours"] is not None else "-"
            mt = f"{m['mean_lead_time_hours']:.2f}" if m["mean_lead_time_hours"] is not None else "-"
            lines.append(f"| {k} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {m['alerts']} | {lt} | {mt} |")
        lines.append("")
    if "attribution" in r:
        a = r["attribution"]
        ms = list(a["shares"].keys())
        lines += [f"### Channel shares of credited conversions ({r['heldout']})", "",
                  f"{a['conversions_with_touchpoints']} conversions with touchpoints ({a['without_touchpoints']} without).", "",
                  "| channel | truth (true shares) | truth (counterfactual) | " + " | ".join(ms) + " |",
                  "|---|---|---|" + "---|" * len(ms)]
        for ch in a["channels"]:
            cf = pct(a["truth_counterfactual"][ch]) if a["truth_counterfactual"] else "-"
            lines.append(f"| {ch} | {pct(a['truth_true_shares'][ch])} | {cf} | " + " | ".join(pct(a["shares"][m][ch]) for m in ms) + " |")
        lines.append("| **MAE vs true shares** | | | " + " | ".join(f"**{a['mae_vs_true_shares'][m]:.3f}**" for m in ms) + " |")
        if a["mae_vs_counterfactual"]:
            lines.append("| **MAE vs counterfactual** | | | " + " | ".join(f"**{a['mae_vs_counterfactual'][m]:.3f}**" for m in ms) + " |")
        lines.append("")
    return "\n".join(lines)


def markdown_alerts(r):
    lines = []
    if r.get("equal_timeliness"):
        e = r["equal_timeliness"]
        lines += [AP.table(e["results"], f"### Abandonment alerts at equal timeliness (carts of {r['heldout']}: {e['carts']}, "
                                         f"{pct(e['abandoned_rate'])} abandoned; the step model's alert_policies)"), ""]
    if r.get("alerts_file"):
        a = r["alerts_file"]
        lines += [f"### The processor's alerts ({a['file']}; {a['carts']} carts of {r['heldout']}, {pct(a['abandoned_rate'])} abandoned)", "",
                  "| alerts | precision | recall | F1 | alerts | median delay (min) | median lead time (h) | not in the truth |",
                  "|---|---|---|---|---|---|---|---|"]
        for k, m in a["table"].items():
            md = "-" if m["median_delay_minutes"] is None else f"{m['median_delay_minutes']:.0f}"
            lt = "-" if m["median_lead_time_hours"] is None else f"{m['median_lead_time_hours']:.1f}"
            lines.append(f"| {k} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {m['alerts']} | {md} | {lt} | {m['unmatched']} |")
        lines.append("")
    return "\n".join(lines)
