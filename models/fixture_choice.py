"""Which customers the stream parity fixture holds (make_fixtures.py): each complete customer's
coverage tags (repeat purchases, cart states, events without session or channel, campaigns, the
purchase path, the time-decay fallback, the L = 64 truncation, ...), and a greedy choice that covers
every tag with the fewest events, within a size budget. Deterministic."""
from __future__ import annotations

import sys

import tsdata as D

MAX_EVENTS = 610          # size budget: ~0.6 KB per event in the file
MAX_CUSTOMERS = 12


def customer_tags(lg: D.Log, sd: D.StepData, c: int, convs, raw_by_id: dict) -> set[str]:
    s, e = int(lg.starts[c]), int(lg.ends[c])
    et = lg.etype[s:e]
    tags = set()
    n_p = int((et == D.PURCHASE).sum())
    if n_p >= 1:
        tags.add("purchase")
    if n_p >= 2:
        tags.add("repeat_purchase")
    if n_p >= 3:
        tags.add("three_purchases")
    if (et == D.CART_ADD).any():
        tags.add("cart_add")
    if (et == D.CHECKOUT).any():
        tags.add("checkout_start")
    for i in range(s, e):
        raw = raw_by_id[lg.event_ids[i]]
        if lg.etype[i] == D.CART_REMOVE:
            tags.add("cart_remove")
            was_open = i > s and sd.cart_open[i - 1]
            if was_open and not sd.cart_open[i]:
                tags.add("cart_emptied")
            elif was_open and sd.cart_open[i]:
                tags.add("cart_reduced")
            if not was_open:
                tags.add("cart_remove_without_cart")
        if lg.etype[i] == D.CART_ADD and isinstance(raw.get("quantity"), int) and raw["quantity"] > 1:
            tags.add("cart_quantity_gt_1")
        if lg.etype[i] == D.CHECKOUT and not sd.cart_open[i]:
            tags.add("checkout_without_cart")
        if "session_id" not in raw:
            tags.add("no_session_id")
        if "channel" not in raw:
            tags.add("no_channel")
        if raw.get("campaign"):
            tags.add("campaign")
        if lg.etype[i] in (D.ET_INDEX["email_open"], D.ET_INDEX["email_click"]):
            tags.add("email_touch")
        if i > s and lg.session[i] < 0 and lg.ts[i] - lg.ts[i - 1] >= 30 * 60_000:
            tags.add("new_session_by_gap")
    # abandoned cart: the cart is open after an event and no purchase follows within 24 h of it
    pts = lg.ts[s:e][et == D.PURCHASE]
    for i in range(s, e):
        if sd.cart_open[i] and (i + 1 == e or not sd.cart_open[i + 1]) and lg.etype[i] != D.PURCHASE:
            if not ((pts > lg.ts[i]) & (pts <= lg.ts[i] + D.ABANDON_HORIZON_MS)).any():
                tags.add("cart_abandoned")
    for p, j, prev, r in convs:
        if len(j) == 0:
            tags.add("conversion_without_touchpoints")
            continue
        if prev is not None:
            tags.add("previous_purchase_token")
        k = len(r[6])
        if k < len(j):
            tags.add("purchase_path_touchpoints")
        if k == 0:
            tags.add("all_touchpoints_in_purchase_path")
        if len(j) == 64 or k == D.ATTR_L - (1 if prev is not None else 0):
            tags.add("journey_truncated_to_L")
    return tags


def choose(lg: D.Log, sd, complete: list[int], convs_of, raw_by_id, fallback_of) -> tuple[list[int], dict]:
    tags = {}
    for c in complete:
        t = customer_tags(lg, sd, c, convs_of[c], raw_by_id)
        if fallback_of.get(c):
            t.add("time_decay_fallback")
        tags[c] = t
    wanted = ["repeat_purchase", "three_purchases", "cart_emptied", "cart_reduced", "cart_abandoned",
              "checkout_start", "cart_quantity_gt_1", "no_session_id", "no_channel", "campaign",
              "previous_purchase_token", "purchase_path_touchpoints", "time_decay_fallback",
              "conversion_without_touchpoints", "journey_truncated_to_L", "email_touch", "new_session_by_gap",
              "cart_remove_without_cart", "checkout_without_cart", "all_touchpoints_in_purchase_path"]
    size = {c: int(lg.ends[c] - lg.starts[c]) for c in complete}
    chosen, covered, total = [], set(), 0
    # rarest tag first: the smallest customer that has it (ties by customer id)
    by_rarity = sorted(wanted, key=lambda w: (sum(w in tags[c] for c in complete), wanted.index(w)))
    for w in by_rarity:
        if w in covered or len(chosen) >= MAX_CUSTOMERS:
            continue
        cands = sorted((c for c in complete if w in tags[c] and c not in chosen and total + size[c] <= MAX_EVENTS),
                       key=lambda c: (size[c], lg.customer_ids[c]))
        if cands:
            c = cands[0]
            chosen.append(c); covered |= tags[c]; total += size[c]
    # fill up with the smallest customers that buy or open a cart
    rest = sorted((c for c in complete if c not in chosen and tags[c] & {"purchase", "cart_add"}),
                  key=lambda c: (size[c], lg.customer_ids[c]))
    for c in rest:
        if len(chosen) >= MAX_CUSTOMERS:
            break
        if total + size[c] <= MAX_EVENTS:
            chosen.append(c); covered |= tags[c]; total += size[c]
    pool = {w: sum(w in tags[c] for c in complete) for w in wanted}
    print(f"customers per tag in the pool: {pool}", file=sys.stderr)
    missing = [w for w in wanted if w not in covered]
    return chosen, {"tags": {lg.customer_ids[c]: sorted(tags[c]) for c in chosen}, "not_covered": missing}
