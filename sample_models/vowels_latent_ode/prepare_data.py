"""JapaneseVowels as irregularly sampled series: train.safetensors and test.safetensors beside this file.

Source: the UCI / UEA JapaneseVowels set (Kudo, Toyama and Shimbo, 1999): 9 male speakers saying
the vowel pair /ae/, 12 LPC cepstrum coefficients per frame, 7 to 29 frames per utterance; the
archive's split has 270 training utterances (30 per speaker) and 370 test utterances. We read the
UEA `.ts` files that the sktime wheel carries (`sktime/datasets/data/JapaneseVowels/`), with the
standard library only; sktime itself is never imported. Get the wheel once with

    pip download sktime --no-deps -d /tmp/sktime

then, from the repository root (the outputs are committed, so nobody else needs to run this):

    python sample_models/vowels_latent_ode/prepare_data.py /tmp/sktime/sktime-1.2.0-py3-none-any.whl

The argument may also be a folder holding JapaneseVowels_TRAIN.ts and JapaneseVowels_TEST.ts.

Irregular sampling, the way Rubanova et al. (2019) and Kidger et al. (2020) make a regular set
irregular: from each utterance we drop a random 30 % of its frames (round(0.3 * length) frames,
the same frames in all 12 channels; a torch.Generator seeded with 0, one draw per utterance,
training file first), which leaves 5 to 20 observed frames per utterance. The kept frames keep
their real time stamps, frame index / 28, so that t lies in [0, 1] on one clock for every
utterance (28 = the longest utterance's last frame index) and a dropped frame shows as a longer gap.

Layout: `x` float32 [N, 29, 25] and `y` int64 [N] (speaker 1..9 -> 0..8). The observed frames of
an utterance sit in order at the start of its 29 slots; the rest are padding. Per slot:
    x[..., 0:12]   the 12 channel values, standardised (0 where missing or padded)
    x[..., 12:24]  the observation mask per channel (1 observed, 0 missing; all 0 on padding)
    x[..., 24]     the frame's time stamp in [0, 1] (0 on padding)
Standardisation is in the data, not in the model: per channel, (value - mean) / std with the mean
and std of the training split's observed values (after the drop); the figures are written into
the files' metadata. No key is named `t` (dise would read it as the integration grid).
"""
from __future__ import annotations

import io
import json
import sys
import zipfile
from pathlib import Path

import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
SEED = 0
DROP_SHARE = 0.3
CHANNELS = 12
MAX_LEN = 29
MIN_KEPT = 2
WHEEL_DIR = "sktime/datasets/data/JapaneseVowels/"


def read_ts_text(text: str) -> tuple[list[list[list[float]]], list[int]]:
    """Parse a UEA ``.ts`` file: header lines start with '@' (or '#', comments), then one line per
    series with its channels separated by ':' and their values by ',', the class label last.

    Returns the series as [channels][frames] lists and the labels as ints, in file order.
    """
    series, labels, in_data = [], [], False
    for line in io.StringIO(text):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("@"):
            in_data = in_data or line.lower().startswith("@data")
            continue
        if not in_data:
            raise ValueError(f"a data line before @data: {line[:40]!r}")
        *channels, label = line.split(":")
        values = [[float(v) for v in channel.split(",")] for channel in channels]
        if len(values) != CHANNELS or len({len(c) for c in values}) != 1:
            raise ValueError(f"expected {CHANNELS} channels of one length, got {[len(c) for c in values]}")
        series.append(values)
        labels.append(int(label))
    return series, labels


def read_split(source: Path, split: str) -> tuple[list[list[list[float]]], list[int]]:
    name = f"JapaneseVowels_{split}.ts"
    if source.is_dir():
        return read_ts_text((source / name).read_text())
    with zipfile.ZipFile(source) as wheel:
        return read_ts_text(wheel.read(WHEEL_DIR + name).decode())


def make_irregular(series: list[list[list[float]]], gen: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per utterance: (kept values [K, 12], their time stamps [K]), K = length - round(0.3 * length)."""
    out = []
    for channels in series:
        frames = torch.tensor(channels, dtype=torch.float64).T                  # [length, 12]
        length = len(frames)
        n_keep = max(MIN_KEPT, length - round(DROP_SHARE * length))
        keep = torch.randperm(length, generator=gen)[:n_keep].sort().values
        out.append((frames[keep], keep.double() / (MAX_LEN - 1)))
    return out


def pack(items: list[tuple[torch.Tensor, torch.Tensor]], mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    x = torch.zeros(len(items), MAX_LEN, 2 * CHANNELS + 1, dtype=torch.float64)
    for i, (values, times) in enumerate(items):
        k = len(values)
        x[i, :k, :CHANNELS] = (values - mean) / std
        x[i, :k, CHANNELS:2 * CHANNELS] = 1.0
        x[i, :k, -1] = times
    return x.float()


def main(source: str) -> None:
    src = Path(source)
    gen = torch.Generator().manual_seed(SEED)
    splits = {name: read_split(src, split) for name, split in (("train", "TRAIN"), ("test", "TEST"))}
    irregular = {name: make_irregular(series, gen) for name, (series, _) in splits.items()}
    observed = torch.cat([values for values, _ in irregular["train"]])
    mean, std = observed.mean(0), observed.std(0)
    for name, (_, labels) in splits.items():
        x = pack(irregular[name], mean, std)
        y = torch.tensor(labels, dtype=torch.int64) - 1
        kept = [len(v) for v, _ in irregular[name]]
        metadata = {"source": "UEA JapaneseVowels (sktime wheel .ts files)", "split": name, "seed": str(SEED),
                    "dropped_share": str(DROP_SHARE), "time": "frame index / 28",
                    "layout": "values[0:12] mask[12:24] time[24]",
                    "channel_mean": json.dumps([round(v, 6) for v in mean.tolist()]),
                    "channel_std": json.dumps([round(v, 6) for v in std.tolist()])}
        save_file({"x": x.contiguous(), "y": y.contiguous()}, str(HERE / f"{name}.safetensors"), metadata=metadata)
        print(f"{name}: {len(y)} utterances, {min(kept)}-{max(kept)} observed frames "
              f"(mean {sum(kept) / len(kept):.1f}), classes {torch.bincount(y).tolist()}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
