"""Profiling in pieces: shard K of N of the samples (``dise profile --shard K/N``, or a torchrun rank)
and the merge of the pieces into the profile one run would have written (``dise merge``).

A shard holds whole batches of the single run (batch b goes to shard b mod N; see
``profiling.batch_starts``): the same samples are batched together and draw the same seeds, so the
merged arrays equal a single run's, and the header too, apart from ``timing`` (measured seconds,
which merging adds up). A shard's profile says which shard it is and of what plan (``SHARD_KEY``,
``PLAN_KEY`` in its meta); ``merge_profiles`` checks that the pieces belong together and cover every
sample exactly once, and drops those two keys.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

import torch

from dise_cli.errors import InputError, UsageError
from dise_cli.profiles import OPTIONAL, UNPAIRED, Profile, ARRAYS
from dise_cli.profiling import ProfileRun, Timing, batch_starts, select_rows

SHARD_KEY = "shard"            # "K/N", 1-based
PLAN_KEY = "shard_plan"        # JSON: the selection every shard draws from (data rows, limit, seed, batch size)
# what every piece of one profile agrees on: the header's meta apart from the shard's own keys and the paths
# (a job array may read the same files under other names); the candidates, task and grid are compared apart
IGNORED_META = (SHARD_KEY, PLAN_KEY, "model", "data")


@dataclass(frozen=True)
class Shard:
    index: int          # 0-based
    count: int

    @classmethod
    def parse(cls, text: str, flag: str = "--shard") -> "Shard":
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
        if not match or not 1 <= int(match.group(1)) <= int(match.group(2)):
            raise UsageError(f"{flag}: '{text}' is not K/N with 1 <= K <= N, e.g. 1/4 for the first of four shards")
        return cls(int(match.group(1)) - 1, int(match.group(2)))

    @property
    def label(self) -> str:
        return f"{self.index + 1}/{self.count}"

    @property
    def pair(self) -> tuple[int, int]:
        return self.index, self.count


@dataclass(frozen=True)
class Plan:
    """The rows a single run profiles, in its batches: what every shard of it must agree on."""

    data_rows: int
    limit: int | None
    seed: int
    batch_size: int

    def rows(self) -> torch.Tensor:
        return select_rows(self.data_rows, self.limit, self.seed)

    def shard_rows(self, shard: Shard) -> torch.Tensor:
        rows = self.rows()
        starts = batch_starts(len(rows), self.batch_size, shard.pair)
        return torch.cat([rows[s:s + self.batch_size] for s in starts]) if starts else rows[:0]

    def dumps(self) -> str:
        return json.dumps({"data_rows": self.data_rows, "limit": self.limit, "seed": self.seed,
                           "batch_size": self.batch_size}, sort_keys=True)

    @classmethod
    def loads(cls, text: str) -> "Plan":
        raw = json.loads(text)
        return cls(int(raw["data_rows"]), None if raw["limit"] is None else int(raw["limit"]), int(raw["seed"]),
                   int(raw["batch_size"]))


def stamp(profile: Profile, shard: Shard, plan: Plan) -> None:
    """Mark ``profile`` as shard ``shard`` of ``plan``."""
    profile.meta[SHARD_KEY] = shard.label
    profile.meta[PLAN_KEY] = plan.dumps()


def merge_profiles(parts: list[tuple[str, Profile]], what: str = "profile") -> Profile:
    """The profile a single run would have written, from its shards ``(name, profile)``; ``InputError``
    naming the piece that does not belong (another model, data, candidates or seed; a shard twice; a
    shard missing; samples out of place)."""
    if not parts:
        raise UsageError("merge: give the shard profiles to merge")
    first_name, first = parts[0]
    plan, count = _plan_of(first_name, first, what)
    seen: dict[int, str] = {}
    for name, part in parts:
        part_plan, part_count = _plan_of(name, part, what)
        if part_plan != plan or part_count != count:
            raise InputError(f"{what} '{name}' is shard {part.meta[SHARD_KEY]} of another plan ({part_plan.dumps()}) "
                             f"than '{first_name}' (shard {first.meta[SHARD_KEY]}, {plan.dumps()})")
        _same_run(first_name, first, name, part, what)
        shard = Shard.parse(part.meta[SHARD_KEY], f"{what} '{name}'")
        if shard.index in seen:
            raise InputError(f"{what} '{name}' is shard {shard.label}, which '{seen[shard.index]}' is too: "
                             f"each shard once")
        seen[shard.index] = name
        if not torch.equal(part.index, plan.shard_rows(shard)):
            raise InputError(f"{what} '{name}' does not hold the samples of shard {shard.label} (it was cut or "
                             f"changed after profiling)")
    missing = [Shard(k, count).label for k in range(count) if k not in seen]
    if missing:
        raise InputError(f"merge: shard {', '.join(missing)} of {count} missing (given: "
                         f"{', '.join(sorted(seen.values()))}); every sample must be profiled once")
    return joined([part for _, part in parts])


def _plan_of(name: str, part: Profile, what: str) -> tuple[Plan, int]:
    if SHARD_KEY not in part.meta or PLAN_KEY not in part.meta:
        raise InputError(f"{what} '{name}' is not a shard (it was not made with --shard K/N); it is whole already")
    try:
        plan = Plan.loads(part.meta[PLAN_KEY])
    except (ValueError, KeyError, TypeError):
        raise InputError(f"{what} '{name}' has a damaged shard plan") from None
    return plan, Shard.parse(part.meta[SHARD_KEY], f"{what} '{name}'").count


def _same_run(first_name: str, first: Profile, name: str, part: Profile, what: str) -> None:
    checks = [("candidates", first.candidates, part.candidates), ("baseline", first.baseline, part.baseline),
              ("task", first.task, part.task), ("time grid", first.t_span, part.t_span)]
    keys = sorted((set(first.meta) | set(part.meta)) - set(IGNORED_META))
    checks += [(key, first.meta.get(key), part.meta.get(key)) for key in keys]
    for label, mine, theirs in checks:
        if mine != theirs:
            raise InputError(f"{what} '{name}' is not a shard of the same run as '{first_name}': its {label} "
                             f"differs ({_short(theirs)} against {_short(mine)})")
    for name_ in OPTIONAL[first.task]:
        if (getattr(first, name_) is None) != (getattr(part, name_) is None):
            raise InputError(f"{what} '{name}' is not a shard of the same run as '{first_name}': one has "
                             f"'{name_}' and the other not")


def _short(value) -> str:
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def joined(parts: list[Profile]) -> Profile:
    """Shards of one run as one profile: their arrays in the single run's order (ascending data row, as
    ``select_rows`` gives them), the timing added up where every shard has its totals."""
    first = parts[0]
    index = torch.cat([p.index for p in parts])
    order = torch.argsort(index)
    merged = Profile(candidates=list(first.candidates), baseline=first.baseline, task=first.task,
                     t_span=list(first.t_span), index=index[order], nfe=_cat(parts, "nfe", order),
                     status=_cat(parts, "status", order),
                     meta={k: v for k, v in first.meta.items() if k not in (SHARD_KEY, PLAN_KEY)},
                     made_with=first.made_with)
    for name in ARRAYS[first.task][2:] + OPTIONAL[first.task]:
        if getattr(first, name) is None:
            continue
        setattr(merged, name, getattr(first, name) if name in UNPAIRED else _cat(parts, name, order))
    timings = [timing_of(p) for p in parts]
    if all(t is not None for t in timings):
        merged.timing = Timing.total(timings).record(torch.device("cpu")) | {"device": first.timing["device"]}
    return merged


def _cat(parts: list[Profile], name: str, order: torch.Tensor) -> torch.Tensor:
    return torch.cat([getattr(p, name) for p in parts])[order]


def timing_of(profile: Profile) -> Timing | None:
    """A profile's timing as totals (None for a file from a dise that did not record them)."""
    t = profile.timing
    if not t or "seconds" not in t or "steps" not in t:
        return None
    return Timing(seconds=[float(v) for v in t["seconds"]], nfe_total=[int(v) for v in profile.nfe.long().sum(0)],
                  peak_memory_bytes=[None] * len(profile.candidates), n_samples=profile.n_samples,
                  steps_total=[int(v) for v in t["steps"]])


def merge_run(parts: list[ProfileRun] | None) -> ProfileRun | None:
    """On rank 0, the ranks' runs as one (the others get None): the merged profile (its header's timing
    added up by ``joined``), and the ranks' timings added, peak memory included, for the report."""
    if parts is None:
        return None
    profile = merge_profiles([(f"rank {rank}", run.profile) for rank, run in enumerate(parts)], what="the part of")
    return ProfileRun(profile=profile, timing=Timing.total([run.timing for run in parts]), world_size=len(parts))
