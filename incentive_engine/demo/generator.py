"""A seeded, deterministic generator of a realistic key-account sales organisation's ledger.

``generate`` is pure: no I/O, no clock, all randomness from one ``random.Random(seed)``. It returns one
batch per month (the month's CRM export, ingested before that month's cycle is closed), each holding
JSON-ready event dicts exactly as the interface spec (interfaces.md) names them, ordered so that every
reference comes first. Every batch, ingested in order, passes the ledger's validation rules.

What the ledger holds (counts scale with ``contracts`` and ``reps``):

- an org of one director, four regional managers (east, south, north, west) and sales reps spread over the
  regions; the west region sells in USD, the others in CNY; everyone is hired (``rep.hired``) in the
  December before the first year, replacements later;
- contracts signed steadily over the years (ACV 50,000 - 3,000,000, log-uniform; terms 12/24/36 months);
- on-time renewals (effective on the anniversary), late renewals (recorded 1-4 months after the
  anniversary, effective on it; some beyond the 90-day grace), lapses (no renewal), up- and downsells,
  early churns (< 180 days after signing) and later churns, reassignments (account rotation and the
  open contracts of leavers), quarterly or yearly service costs (some above 20% of the ACV);
- yearly targets (January batch), CSAT and NPS per rep and year (December batch), a few compliance
  findings (vetoes with and without a contract, warnings), good and bad leavers with their
  replacements, and a couple of approved manual adjustments.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any, NamedTuple

REGIONS: tuple[str, ...] = ("east", "south", "north", "west")
USD_REGION = "west"
DIRECTOR_ID = "DIR-01"

_ACV_LN_LO = math.log(50_000)
_ACV_LN_HI = math.log(3_000_000)
_ACV_MEAN = (3_000_000 - 50_000) / (_ACV_LN_HI - _ACV_LN_LO)  # mean of the log-uniform distribution

# Order of event types on the same effective date inside a batch (references first, endings last).
_RANK = {
    "rep.hired": 0,
    "target.set": 1,
    "contract.signed": 2,
    "contract.renewed": 3,
    "contract.expanded": 4,
    "contract.reassigned": 5,
    "service.cost": 6,
    "compliance.violation": 7,
    "adjustment.recorded": 8,
    "kpi.measured": 9,
    "contract.churned": 10,
    "rep.terminated": 11,
}


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


_SURNAMES = _words("Li Wang Zhang Liu Chen Yang Zhao Huang Zhou Wu Xu Sun Hu Zhu Gao Lin He Guo Ma Luo")
_GIVEN = _words("Wei Fang Na Min Jing Lei Qiang Jun Yang Yan Jie Tao Ming Chao Xiu Hui Ling Bo Hao Yu")
_WEST_FIRST = _words("Alex Jordan Taylor Morgan Casey Riley Jamie Avery Quinn Drew Sam Kim")
_WEST_LAST = _words("Smith Johnson Brown Garcia Miller Davis Lopez Wilson Moore Clark Young Hall")
_CHURN_EARLY = ("failed onboarding", "budget cut", "champion left the customer", "chose a competitor")
_CHURN_LATE = (
    "moved to a competitor",
    "budget cut",
    "merged into a group contract",
    "project cancelled",
    "insourced the service",
)
_VETO = (
    "gift to the buyer's procurement lead",
    "side letter promising unapproved discounts",
    "backdated order form",
    "channel partner kickback",
    "falsified customer reference",
)
_WARNING = (
    "late CRM update of the opportunity stage",
    "discount approval filed after signing",
    "missing customer due-diligence form",
    "expense report without receipts",
    "forecast entered without manager review",
    "unapproved contract template clause",
)

_MDAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_DAY = timedelta(days=1)


def _days_in_month(y: int, m: int) -> int:
    if m == 2 and y % 4 == 0 and (y % 100 != 0 or y % 400 == 0):
        return 29
    return _MDAYS[m - 1]


def _add_months(d: date, n: int) -> date:
    """Pendulum semantics: the day is clamped to the end of the target month (Jan 31 + 1 month = Feb 28)."""
    m0 = d.month - 1 + n
    y = d.year + m0 // 12
    m = m0 % 12 + 1
    dim = _days_in_month(y, m)
    return date(y, m, d.day if d.day <= dim else dim)


def _money(cents: int) -> str:
    sign = "-" if cents < 0 else ""
    cents = abs(cents)
    return f"{sign}{cents // 100}.{cents % 100:02d}"


@dataclass(frozen=True)
class DemoBatch:
    period: str  # "YYYY-MM": the month's CRM export, to be ingested before closing that period
    events: tuple[dict[str, Any], ...]  # JSON-ready dicts in an order that is valid to ingest


@dataclass(frozen=True)
class DemoLedger:
    batches: tuple[DemoBatch, ...]  # one per month, first_year-01 .. last year-12, possibly empty

    def all_events(self) -> list[dict[str, Any]]:
        return [e for b in self.batches for e in b.events]


def write_batches(ledger: DemoLedger, directory: Path) -> list[Path]:
    """Write one ``<period>.jsonl`` per non-empty batch into ``directory``; returns the paths in order."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for batch in ledger.batches:
        if not batch.events:
            continue
        path = directory / f"{batch.period}.jsonl"
        with path.open("w", encoding="utf-8", newline="\n") as fh:
            for event in batch.events:
                fh.write(json.dumps(event, ensure_ascii=False))
                fh.write("\n")
        paths.append(path)
    return paths


def generate(
    seed: int = 7, *, reps: int = 40, contracts: int = 420, first_year: int = 2026, years: int = 5
) -> DemoLedger:
    """The sample ledger for ``seed``: same arguments, same dicts (pure, O(contracts + reps x years))."""
    if years < 1:
        raise ValueError("years must be at least 1")
    if reps < 1 or contracts < 0:
        raise ValueError("reps must be positive and contracts not negative")
    if not 1901 <= first_year <= 2200 - years:
        raise ValueError("first_year out of range")
    return _Generator(seed, reps, contracts, first_year, years).run()


@dataclass
class _Script:
    """Features forced onto a contract so that small ledgers still show every case."""

    early_churn: bool = False
    late_k: int | None = None  # first renewal recorded k months late
    downsell: bool = False
    high_service: bool = False
    rotate: bool = False
    protect: bool = False  # no churn or lapse in the first term


class _Contract(NamedTuple):
    cid: str
    seller: str
    currency: str
    signed: date


class _Generator:
    def __init__(self, seed: int, reps: int, contracts: int, first_year: int, years: int) -> None:
        self.rng = random.Random(seed)
        self.n_people = reps
        self.n_contracts = contracts
        self.fy = first_year
        self.years = years
        self.start = date(first_year, 1, 1)
        self.end = date(first_year + years - 1, 12, 31)
        self.n_periods = 12 * years
        # per month: the events and their sort keys (effective date, then type rank; emission order on ties)
        self.buckets: list[list[dict[str, Any]]] = [[] for _ in range(self.n_periods)]
        self.keys: list[list[int]] = [[] for _ in range(self.n_periods)]
        self._iso: dict[date, str] = {}
        # org
        self.hired: dict[str, date] = {}
        self.left: dict[str, date] = {}
        self.leaver_kind: dict[str, str] = {}
        self.region_of: dict[str, str] = {}
        self.region_reps: dict[str, list[str]] = {r: [] for r in REGIONS}
        self.manager: dict[str, str] = {}
        self.sales: list[str] = []
        self.n_initial_sales = 0
        # contracts
        self.accounts: dict[str, list[str]] = {r: [] for r in REGIONS}
        self.n_accounts = 0
        self.signed: list[_Contract] = []

    # --- helpers --------------------------------------------------------------------------------

    def iso(self, d: date) -> str:
        s = self._iso.get(d)
        if s is None:
            s = self._iso[d] = d.isoformat()
        return s

    def pidx(self, d: date) -> int:
        return (d.year - self.fy) * 12 + d.month - 1

    def period_end(self, p: int) -> date:
        y, m = self.fy + p // 12, p % 12 + 1
        return date(y, m, _days_in_month(y, m))

    def emit(self, d: date, event: dict[str, Any], period: int | None = None) -> None:
        p = self.pidx(d) if period is None else period
        if p < 0:
            p = 0  # facts from before the first month arrive with the first export
        self.buckets[p].append(event)
        self.keys[p].append(d.toordinal() * 16 + _RANK[event["type"]])

    def active(self, rep_id: str, d: date) -> bool:
        if self.hired[rep_id] > d:
            return False
        t = self.left.get(rep_id)
        return t is None or t > d

    def pick_active(self, pool: list[str], d: date, exclude: str | None = None) -> str | None:
        rng = self.rng
        if not pool:
            return None
        for _ in range(8):
            r = pool[rng.randrange(len(pool))]
            if r != exclude and self.active(r, d):
                return r
        for r in pool:
            if r != exclude and self.active(r, d):
                return r
        return None

    def colleague(self, region: str, d: date, exclude: str) -> str:
        """Another rep of the region employed on ``d`` (the regional manager if nobody is)."""
        return self.pick_active(self.region_reps[region], d, exclude) or self.manager[region]

    def name(self, region: str | None) -> str:
        rng = self.rng
        if region == USD_REGION:
            return f"{rng.choice(_WEST_FIRST)} {rng.choice(_WEST_LAST)}"
        return f"{rng.choice(_SURNAMES)} {rng.choice(_GIVEN)}"

    def random_day(self, lo: date, hi: date) -> date:
        return lo + timedelta(days=self.rng.randint(0, (hi - lo).days))

    # --- the org ----------------------------------------------------------------------------------

    def hire(self, rep_id: str, d: date, role: str, region: str | None, manager_id: str | None) -> None:
        event: dict[str, Any] = {
            "type": "rep.hired",
            "effective": self.iso(d),
            "event_id": f"hr-{rep_id}",
            "rep_id": rep_id,
            "name": self.name(region),
            "role": role,
        }
        if region is not None:
            event["region"] = region
        if manager_id is not None:
            event["manager_id"] = manager_id
        self.emit(d, event)
        self.hired[rep_id] = d
        if role == "rep" and region is not None:
            self.region_of[rep_id] = region
            self.region_reps[region].append(rep_id)
            self.sales.append(rep_id)

    def build_org(self) -> None:
        rng = self.rng
        dec = date(self.fy - 1, 12, 1)
        self.hire(DIRECTOR_ID, dec, "director", None, None)
        for region in REGIONS:
            mid = f"MGR-{region.upper()}"
            self.manager[region] = mid
            self.hire(mid, dec, "manager", region, DIRECTOR_ID)
        n_sales = max(2, self.n_people - 1 - len(REGIONS))
        for i in range(n_sales):
            region = REGIONS[i % len(REGIONS)]
            self.hire(
                f"REP-{i + 1:04d}", date(self.fy - 1, 12, rng.randint(1, 20)), "rep", region, self.manager[region]
            )
        self.n_initial_sales = n_sales

        # leavers (good and bad) and the new hires who replace them
        n_leavers = min(n_sales, max(2, round(n_sales * 0.12)))
        span = (self.end - self.start).days
        lo, hi = int(span * 0.15), int(span * 0.85)
        next_id = n_sales + 1
        for i, rid in enumerate(rng.sample(self.sales[:n_sales], n_leavers)):
            t = self.start + timedelta(days=rng.randint(lo, hi))
            kind = "good" if i == 0 else "bad" if i == 1 else ("good" if rng.random() < 0.6 else "bad")
            self.left[rid] = t
            self.leaver_kind[rid] = kind
            self.emit(
                t,
                {
                    "type": "rep.terminated",
                    "effective": self.iso(t),
                    "event_id": f"hr-exit-{rid}",
                    "rep_id": rid,
                    "leaver": kind,
                },
            )
            h = t + timedelta(days=rng.randint(7, 45))
            if h <= self.end - timedelta(days=30):
                region = self.region_of[rid]
                self.hire(f"REP-{next_id:04d}", h, "rep", region, self.manager[region])
                next_id += 1

    def targets_and_kpis(self) -> None:
        rng = self.rng
        per_rep = self.n_contracts / self.years / max(1, self.n_initial_sales) * _ACV_MEAN
        for year in range(self.fy, self.fy + self.years):
            jan1, sep30, dec31 = date(year, 1, 1), date(year, 9, 30), date(year, 12, 31)
            for rid in self.sales:
                h, t = self.hired[rid], self.left.get(rid)
                currency = "USD" if self.region_of[rid] == USD_REGION else "CNY"
                if t is None or t > jan1:
                    eff, share = None, 0.0
                    if h <= jan1:
                        eff, share = jan1, 1.0
                    elif h.year == year:
                        eff, share = h, (dec31 - h).days / 365
                    if eff is not None:
                        amount = max(100_000, round(per_rep * share * rng.uniform(0.8, 1.2) / 10_000) * 10_000)
                        self.emit(
                            eff,
                            {
                                "type": "target.set",
                                "effective": self.iso(eff),
                                "event_id": f"tgt-{rid}-{year}",
                                "rep_id": rid,
                                "year": year,
                                "amount": f"{amount}.00",
                                "currency": currency,
                            },
                        )
                if h <= sep30 and (t is None or t > dec31):
                    csat = min(50, max(10, round(rng.gauss(4.1, 0.45) * 10)))
                    nps = min(100, max(-100, round(rng.gauss(30, 22))))
                    eff_s = self.iso(dec31)
                    self.emit(
                        dec31,
                        {
                            "type": "kpi.measured",
                            "effective": eff_s,
                            "rep_id": rid,
                            "year": year,
                            "kpi": "csat",
                            "value": f"{csat // 10}.{csat % 10}",
                        },
                    )
                    self.emit(
                        dec31,
                        {
                            "type": "kpi.measured",
                            "effective": eff_s,
                            "rep_id": rid,
                            "year": year,
                            "kpi": "nps",
                            "value": str(nps),
                        },
                    )

    # --- contracts --------------------------------------------------------------------------------

    def contracts(self) -> None:
        rng = self.rng
        n = self.n_contracts
        span_days = (self.end - self.start).days + 1
        sign_dates = sorted(self.start + timedelta(days=rng.randrange(span_days)) for _ in range(n))
        terms = [12 if x < 0.75 else 24 if x < 0.9 else 36 for x in (rng.random() for _ in range(n))]
        scripts = self.force_features(sign_dates, terms)
        for i in range(n):
            self.contract(i, sign_dates[i], terms[i], scripts.get(i))

    def force_features(self, sign_dates: list[date], terms: list[int]) -> dict[int, _Script]:
        """Pick distinct contracts that must show each feature (ledgers of any size then show them all)."""
        rng, end, last = self.rng, self.end, self.n_periods - 1
        order = list(range(len(sign_dates)))
        rng.shuffle(order)
        scripts: dict[int, _Script] = {}

        def late_ok(i: int, k: int, beyond: bool) -> bool:
            anniv = _add_months(sign_dates[i], terms[i])
            rp = self.pidx(anniv) + k
            if anniv > end or rp > last:
                return False
            past_grace = (self.period_end(rp - 1) - anniv).days >= 90
            return past_grace == beyond

        wishes: list[tuple[Any, _Script]] = [
            (lambda i: sign_dates[i] + timedelta(days=175) <= end, _Script(early_churn=True)),
            (lambda i: late_ok(i, 4, True), _Script(late_k=4, protect=True)),
            (lambda i: late_ok(i, 1, False), _Script(late_k=1, protect=True)),
            (lambda i: sign_dates[i] + timedelta(days=60) <= end, _Script(downsell=True, protect=True)),
            (lambda i: _add_months(sign_dates[i], 12) <= end, _Script(high_service=True, protect=True)),
            (lambda i: sign_dates[i] + timedelta(days=60) <= end, _Script(rotate=True, protect=True)),
        ]
        for wish, script in wishes:
            for i in order:
                if i not in scripts and wish(i):
                    scripts[i] = script
                    break
        return scripts

    def seller_for(self, i: int, d: date) -> str:
        if i < len(REGIONS):  # the first contracts cover every region (and so both currencies)
            rid = self.pick_active(self.region_reps[REGIONS[i]], d)
            if rid is not None:
                return rid
        return self.pick_active(self.sales, d) or self.manager[REGIONS[i % len(REGIONS)]]

    def account_for(self, region: str) -> str:
        rng = self.rng
        pool = self.accounts[region]
        if pool and rng.random() < 0.2:
            return pool[rng.randrange(len(pool))]
        self.n_accounts += 1
        aid = f"AC-{self.n_accounts:06d}"
        pool.append(aid)
        return aid

    def acv(self) -> int:
        """An ACV in cents, log-uniform between 50,000 and 3,000,000 (most round to the thousand)."""
        rng = self.rng
        x = math.exp(rng.uniform(_ACV_LN_LO, _ACV_LN_HI))
        if rng.random() < 0.6:
            return max(50_000, round(x / 1000) * 1000) * 100
        return max(5_000_000, round(x * 100))

    def contract(self, i: int, s: date, t0: int, script: _Script | None) -> None:
        rng, end = self.rng, self.end
        sc = script or _Script(early_churn=rng.random() < 0.03, rotate=rng.random() < 0.025)
        num = f"{i + 1:06d}"
        cid = f"CT-{num}"
        seller = self.seller_for(i, s)
        region = self.region_of.get(seller) or next(r for r, m in self.manager.items() if m == seller)
        currency = "USD" if region == USD_REGION else "CNY"
        acv = self.acv()
        signed: dict[str, Any] = {
            "type": "contract.signed",
            "effective": self.iso(s),
            "event_id": f"crm-opp-{num}",
            "contract_id": cid,
            "account_id": self.account_for(region),
            "rep_id": seller,
            "acv": _money(acv),
            "currency": currency,
            "term_months": t0,
        }
        x = rng.random()
        if x < 0.85:
            signed["gross_margin"] = f"0.{rng.randint(20, 70):02d}"
        elif x < 0.9:
            signed["gross_margin"] = f"0.{rng.randint(8, 19):02d}"
        self.emit(s, signed)
        self.signed.append(_Contract(cid, seller, currency, s))

        if sc.high_service:
            svc = "high"
        else:
            y = rng.random()
            svc = "quarterly" if y < 0.2 else "yearly" if y < 0.45 else "high" if y < 0.5 else "none"
        owner = seller
        start, term, floor = s, t0, s  # floor: events of this term other than costs come on or after it
        n_ren = n_exp = n_own = 0
        first = True
        while True:
            anniv = _add_months(start, term)
            last_day = anniv - _DAY
            term_acv = acv
            # --- how this term ends
            churn: date | None = None
            outcome = "on_time"
            if first and sc.early_churn:
                churn = s + timedelta(days=rng.randint(20, 175))
            elif first and sc.protect:
                outcome = "late" if sc.late_k else "on_time"
            else:
                lo = max(start + _DAY, s + timedelta(days=181), floor)
                if rng.random() < 0.03 and lo < last_day:
                    churn = self.random_day(lo, last_day - _DAY)
                else:
                    y = rng.random()
                    outcome = "on_time" if y < 0.73 else "late" if y < 0.83 else "lapse" if y < 0.91 else "churn"
                    if outcome == "churn":
                        c = last_day - timedelta(days=rng.randint(0, 30))
                        if c > max(start, floor):
                            churn = c
                        else:
                            outcome = "lapse"
            window_end = min(end, churn - _DAY if churn is not None else last_day)

            # --- up- and downsells
            steps: list[tuple[date, int]] = []  # (date, acv after) for the costs below
            lo = max(start + _DAY, floor)
            if lo <= window_end:
                moves: list[tuple[date, int]] = []
                if (first and sc.downsell) or rng.random() < 0.07:
                    moves.append((self.random_day(lo, window_end), -1))
                if rng.random() < 0.15:
                    moves.append((self.random_day(lo, window_end), 1))
                moves.sort()
                for d, sign in moves:
                    share = rng.uniform(0.05, 0.3) if sign < 0 else rng.uniform(0.05, 0.4)
                    delta = sign * max(100, round(acv * share / 10_000) * 10_000 or 100)
                    if acv + delta <= 0:
                        continue
                    acv += delta
                    n_exp += 1
                    steps.append((d, acv))
                    self.emit(
                        d,
                        {
                            "type": "contract.expanded",
                            "effective": self.iso(d),
                            "event_id": f"crm-exp-{num}-{n_exp}",
                            "contract_id": cid,
                            "acv_delta": _money(delta),
                        },
                    )

            # --- service costs (no event_id: CRM cost lines carry none)
            if svc != "none":
                every = 3 if svc == "quarterly" else 12
                for k in range(1, max(1, term // every) + 1):
                    d = _add_months(start, every * k) - _DAY
                    if d > window_end:
                        break
                    base = acv if not steps or steps[-1][0] <= d else self.acv_at(steps, term_acv, d)
                    if svc == "quarterly":
                        share = rng.uniform(0.01, 0.04)
                    elif svc == "yearly":
                        share = rng.uniform(0.03, 0.15)
                    else:
                        share = rng.uniform(0.22, 0.35)
                    self.emit(
                        d,
                        {
                            "type": "service.cost",
                            "effective": self.iso(d),
                            "contract_id": cid,
                            "amount": _money(round(base * share)),
                        },
                    )

            # --- ownership: account rotation and the open contracts of leavers
            rot: date | None = None
            lo = max(start + _DAY, floor)
            if first and sc.rotate and lo <= window_end:
                rot = self.random_day(lo, window_end)
            cur = max(start, floor)
            while True:
                t = self.left.get(owner)
                lr: date | None = None
                if t is not None:
                    lr = max(t, cur)
                    if rng.random() < 0.3:
                        lr += timedelta(days=rng.randint(1, 5))
                    if lr > window_end:
                        lr = None
                if rot is not None and (lr is None or rot < lr):
                    d, rot = rot, None
                elif lr is not None:
                    d = lr
                else:
                    break
                new = self.colleague(region, d, owner)
                if new == owner:
                    continue
                n_own += 1
                self.emit(
                    d,
                    {
                        "type": "contract.reassigned",
                        "effective": self.iso(d),
                        "event_id": f"crm-own-{num}-{n_own}",
                        "contract_id": cid,
                        "rep_id": new,
                    },
                )
                owner, cur = new, d

            # --- the end of the term
            if churn is not None:
                if churn <= end:
                    early = churn < s + timedelta(days=180)
                    self.emit(
                        churn,
                        {
                            "type": "contract.churned",
                            "effective": self.iso(churn),
                            "event_id": f"crm-chn-{num}",
                            "contract_id": cid,
                            "reason": rng.choice(_CHURN_EARLY if early else _CHURN_LATE),
                        },
                    )
                return
            if anniv > end or outcome == "lapse":
                return
            factor = rng.uniform(0.9, 1.3)
            new_acv = max(100, round(acv * factor / 100) * 100)
            new_term = term if rng.random() < 0.3 else 12
            n_ren += 1
            renewal = {
                "type": "contract.renewed",
                "effective": self.iso(anniv),
                "event_id": f"crm-ren-{num}-{n_ren}",
                "contract_id": cid,
                "acv": _money(new_acv),
                "term_months": new_term,
            }
            if outcome == "late":
                k = sc.late_k if first and sc.late_k else rng.choice((1, 1, 1, 2, 2, 2, 3, 3, 4, 4))
                rp = self.pidx(anniv) + k
                if rp >= self.n_periods:
                    return  # the renewal arrives after the ledger's horizon
                self.emit(anniv, renewal, period=rp)
                floor = date(self.fy + rp // 12, rp % 12 + 1, 1)
            else:
                self.emit(anniv, renewal)
                floor = anniv
            start, term, acv, first = anniv, new_term, new_acv, False

    @staticmethod
    def acv_at(steps: list[tuple[date, int]], start_acv: int, d: date) -> int:
        acv = start_acv
        for when, after in steps:
            if when <= d:
                acv = after
        return acv

    # --- compliance and adjustments ---------------------------------------------------------------

    def compliance(self) -> None:
        rng, end = self.rng, self.end
        n = self.n_contracts
        n_veto, n_warn = max(3, round(n / 140)), max(5, round(n / 84))
        bad = [r for r, k in self.leaver_kind.items() if k == "bad"]
        findings: list[tuple[date, dict[str, Any]]] = []

        def contract_finding(severity: str, texts: tuple[str, ...]) -> tuple[date, dict[str, Any]] | None:
            if not self.signed:
                return None
            c = self.signed[rng.randrange(len(self.signed))]
            d = min(end, c.signed + timedelta(days=rng.randint(10, 200)))
            t = self.left.get(c.seller)
            if t is not None and d >= t:
                d = max(c.signed, t - _DAY)
            return d, {
                "type": "compliance.violation",
                "effective": self.iso(d),
                "event_id": "",  # numbered below, in the order the findings are made
                "rep_id": c.seller,
                "severity": severity,
                "contract_id": c.cid,
                "description": rng.choice(texts),
            }

        def rep_finding(severity: str, texts: tuple[str, ...], rep_id: str | None) -> tuple[date, dict[str, Any]]:
            if rep_id is not None:  # a bad leaver, found out a few weeks before being let go
                t = self.left[rep_id]
                d = max(self.hired[rep_id], t - timedelta(days=rng.randint(7, 40)))
            else:
                d = self.random_day(self.start, end)
                rep_id = self.pick_active(self.sales, d) or DIRECTOR_ID
            return d, {
                "type": "compliance.violation",
                "effective": self.iso(d),
                "event_id": "",  # numbered below, in the order the findings are made
                "rep_id": rep_id,
                "severity": severity,
                "description": rng.choice(texts),
            }

        for k in range(n_veto):
            found = contract_finding("veto", _VETO) if k % 2 == 0 else None
            if found is None:
                found = rep_finding("veto", _VETO, bad[0] if k == 1 and bad else None)
            findings.append(found)
        for _ in range(n_warn):
            found = contract_finding("warning", _WARNING) if rng.random() < 0.5 else None
            findings.append(found or rep_finding("warning", _WARNING, None))
        for k, (d, event) in enumerate(findings, 1):
            event["event_id"] = f"cmp-{k:05d}"
            self.emit(d, event)

    def adjustments(self) -> None:
        rng, end = self.rng, self.end
        for k in range(1, max(2, self.n_contracts // 2000) + 1):
            if k % 2 == 0 and self.signed:
                c = self.signed[rng.randrange(len(self.signed))]
                d = self.random_day(c.signed, min(end, c.signed + timedelta(days=120)))
                event: dict[str, Any] = {
                    "type": "adjustment.recorded",
                    "effective": self.iso(d),
                    "event_id": f"adj-{k:05d}",
                    "rep_id": c.seller,
                    "amount": _money(-rng.randint(5, 40) * 10_000),
                    "currency": c.currency,
                    "reason": "correction: commission on a duplicated order line",
                    "approved_by": DIRECTOR_ID,
                    "contract_id": c.cid,
                }
            else:
                d = self.random_day(self.start, end)
                rid = self.pick_active(self.sales, d)
                if rid is None:
                    continue
                currency = "USD" if self.region_of[rid] == USD_REGION else "CNY"
                event = {
                    "type": "adjustment.recorded",
                    "effective": self.iso(d),
                    "event_id": f"adj-{k:05d}",
                    "rep_id": rid,
                    "amount": _money(rng.randint(10, 80) * 10_000),
                    "currency": currency,
                    "reason": "SPIFF: launch campaign bonus",
                    "approved_by": DIRECTOR_ID,
                }
            self.emit(d, event)

    # --- assembly ---------------------------------------------------------------------------------

    def run(self) -> DemoLedger:
        self.build_org()
        self.contracts()
        self.compliance()
        self.adjustments()
        self.targets_and_kpis()
        batches = []
        for p, (bucket, keys) in enumerate(zip(self.buckets, self.keys, strict=True)):
            order = sorted(range(len(bucket)), key=keys.__getitem__)  # stable: ties keep emission order
            batches.append(DemoBatch(f"{self.fy + p // 12:04d}-{p % 12 + 1:02d}", tuple(bucket[i] for i in order)))
        return DemoLedger(tuple(batches))
