"""Pack a compact, lossless copy of the training data into ``carry/data`` for a lent GPU.

The device machine sees only the repository's working tree (at most 64 MiB,
ignored folders named in ``carry`` included); ``../shared/datasets`` stays
behind. This copies what one device training call needs into the ignored
folder ``carry/data`` and checks that the whole tree that would travel fits.

Profiles (one at a time: packing one removes the other's files):

* ``default``: the HR training images, T91 + BSD200 (lossless WebP, or the
  original PNG where that is smaller) + BSDS500-test (the original JPEGs,
  byte for byte), and the validation set that chooses checkpoints: the
  central 256 x 256 of each Kodak24 image (lossless WebP; 0.1 of the pixels,
  so that all the training images fit).
* ``real``: the mixture that trains ``real`` (``configs/device-real-h100.yaml``):
  the central ``--pair-crop`` square (384 px) of each *training* pair of both
  City100 cameras (iPhone X 1-40 into ``City100-iPhoneX/{HR,LR}``, Nikon
  D5500 1-24 into ``City100-NikonD5500/{HR,LR}``; the pairs
  ``make_eval_sets.HELD_OUT`` withholds never travel: they are scored here
  after the call), the HR images as for ``default``, and the validation set
  that chooses checkpoints: the central 256 x 256 of each Kodak24-mixed image
  (``make_eval_sets.py``'s seeded JPEG/noise x4 degradation, its 64 x 64 LR
  beside it, ``NAME_HR.webp`` + ``NAME_LR.webp``). The shipped ``default``
  weights must travel as the start: pack with ``--hold-weights real``.

Travelling size = files git would send (tracked + untracked, not ignored; the
shipped weights under ``src/hbpn/weights`` included) + everything under
``carry/``. When it is over ``--budget-mib`` minus ``--margin-mib``, images
are dropped from the end of the trimmable groups (BSD200, then BSDS500-test
in ``real``), each named count printed; if that is not enough the script
stops with status 2 and writes nothing more.

Deterministic and idempotent: a manifest (``carry/data/MANIFEST.json``) keeps
each output's source SHA-256, so a rerun only encodes what changed; every file
is written atomically.

    python scripts/pack_training_data.py                     # profile default
    python scripts/pack_training_data.py --profile real --hold-weights real   # default travels: the start
    python scripts/pack_training_data.py --source /data/datasets --dry-run
    python scripts/pack_training_data.py --hold-weights all   # from scratch: every image travels
    python scripts/pack_training_data.py --restore-weights     # after the device call
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # run from a checkout without installing hbpn

from hbpn.io.files import atomic_path  # noqa: E402 (after the sys.path line above)

MIB = 1024 * 1024
MANIFEST = "MANIFEST.json"
#: Side of the central crop of each validation image (pixels; a multiple of 2, 4 and 8).
VAL_CROP = 256
#: Side of the central crop of each training pair of ``real`` (the 64 MiB hold all 64 pairs at this size).
PAIR_CROP = 384
#: The shipped weights, tracked by git; --hold-weights takes them out of the travelling tree.
WEIGHTS = Path("src/hbpn/weights")
IMAGE_SUFFIXES = {".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".ppm"}


class PackError(Exception):
    """An expected failure: printed in one line, exit status 2."""


@dataclass
class Group:
    """Files copied together; ``min_keep`` < len(items) makes the group trimmable (from its end)."""

    name: str
    items: list[tuple[Path, str, str]]  # (source, destination relative to dest, "webp" or "copy")
    min_keep: int
    trim_rank: int = 0  # lower ranks are trimmed first
    unit: int = 1  # files dropped at a time (2: an HR/LR pair)


def _images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise PackError(f"{folder}: no such folder (point --source at the datasets folder)")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise PackError(f"{folder}: no images")
    return files


def _pair_items(root: Path, stop: int, folder: str, how: str) -> list[tuple[Path, str, str]]:
    """Pairs ``[0, stop)`` of a ``HR/`` + ``LR/`` camera folder, HR and LR side by side (trimming drops whole pairs)."""
    hr = _images(root / "HR")
    lr = {p.stem: p for p in _images(root / "LR")}
    missing = [p.name for p in hr if p.stem not in lr]
    if missing:
        raise PackError(f"{root / 'LR'}: no LR image for {', '.join(missing[:5])}")
    out = []
    for p in hr[:stop]:
        out += [(p, f"{folder}/HR/{p.stem}.webp", how), (lr[p.stem], f"{folder}/LR/{p.stem}.webp", how)]
    return out


def _hr_groups(source: Path, bsd_keep: int, bsds_keep: int | None = None) -> list[Group]:
    """T91, BSDS500-test and BSD200, the HR images both profiles degrade on the fly."""
    t91 = [(p, f"train/T91/{p.stem}.webp", "webp") for p in _images(source / "train/T91")]
    bsd = [(p, f"train/BSD200/{p.stem}.webp", "webp") for p in _images(source / "train/BSD200")]
    bsds = [(p, f"train/BSDS500-test/{p.name}", "copy") for p in _images(source / "train/BSDS500-test")]
    return [
        Group("T91", t91, len(t91)),
        Group("BSDS500-test", bsds, len(bsds) if bsds_keep is None else bsds_keep, trim_rank=1),
        Group("BSD200", bsd, min_keep=bsd_keep),
    ]


def plan(profile: str, source: Path, pair_crop: int = PAIR_CROP) -> list[Group]:
    """The groups of one profile, in a fixed order."""
    if profile == "default":
        kodak = [(p, f"Kodak24/{p.stem}.webp", "crop") for p in _images(source / "val/Kodak24")]
        return [Group("Kodak24 crops (val)", kodak, len(kodak)), *_hr_groups(source, bsd_keep=50)]
    if profile == "real":
        from make_eval_sets import HELD_OUT  # beside this script: one list of the withheld pairs

        kodak = _images(source / "val/Kodak24")
        val = []
        for i, p in enumerate(kodak):  # the index seeds the degradation, as in make_eval_sets.py
            val += [(p, f"Kodak24-mixed/{p.stem}_HR.webp", f"mixed-hr:{i}")]
            val += [(p, f"Kodak24-mixed/{p.stem}_LR.webp", f"mixed-lr:{i}")]
        groups = [Group("Kodak24-mixed crops (val)", val, len(val), unit=2)]
        for camera, (start, stop) in HELD_OUT.items():
            root = source / "real" / camera
            count = len(_images(root / "HR"))
            if stop != count:
                raise PackError(f"{root}: {count} pairs, expected {stop} (training 1-{start}, withheld the rest)")
            name = camera.removesuffix("-train")
            items = _pair_items(root, start, name, f"crop:{pair_crop}")
            groups.append(Group(f"{name} 1-{start} (train)", items, len(items), unit=2))
        return groups + _hr_groups(source, bsd_keep=20, bsds_keep=100)
    raise PackError(f"unknown profile {profile!r}: choose default or real")


def central_box(width: int, height: int, side: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the central ``side`` x ``side`` box, smaller where the image is."""
    cw, ch = min(side, width), min(side, height)
    left, top = (width - cw) // 2, (height - ch) // 2
    return left, top, left + cw, top + ch


def render(src: Path, how: str) -> Image.Image:
    """The RGB image ``how`` makes of ``src``: whole, a central crop, or a Kodak24-mixed validation crop."""
    import numpy as np

    if how.startswith("mixed-"):  # Kodak24-mixed image I: HR, or its degraded x4 LR, the same central region
        from make_eval_sets import SCALE, degraded_pair, mixed

        side, index = how.split(":")
        hr, lr = degraded_pair(src, "Kodak24-mixed", int(index), mixed)
        left, top, right, bottom = central_box(lr.shape[1], lr.shape[0], VAL_CROP // SCALE)
        if side == "mixed-hr":  # the same region at x4: the box's corner is on the LR pixel grid
            return Image.fromarray(hr).crop((SCALE * left, SCALE * top, SCALE * right, SCALE * bottom))
        return Image.fromarray(np.ascontiguousarray(lr)).crop((left, top, right, bottom))
    with Image.open(src) as im:
        rgb = im.convert("RGB")  # training reads every image as RGB
    if how == "crop" or how.startswith("crop:"):  # the central square (VAL_CROP, or the size given)
        side = VAL_CROP if how == "crop" else int(how.split(":")[1])
        rgb = rgb.crop(central_box(rgb.width, rgb.height, side))
    return rgb


def encode(src: Path, how: str) -> bytes:
    """Lossless bytes for ``src``: WebP whose decoded RGB equals :func:`render`'s, or the source file itself."""
    raw = src.read_bytes()
    if how == "copy":
        return raw
    import numpy as np

    rgb = render(src, how)
    buf = io.BytesIO()
    # method 4: as small as method 6 here (within 1%) at a fraction of the time
    rgb.save(buf, format="WEBP", lossless=True, quality=100, method=4, exact=True)
    data = buf.getvalue()
    with Image.open(io.BytesIO(data)) as back:
        same = np.array_equal(np.asarray(back.convert("RGB")), np.asarray(rgb))
    if not same:
        raise PackError(f"{src}: lossless WebP did not decode to the same pixels")
    if how == "webp" and src.suffix.lower() == ".png" and len(raw) <= len(data):
        return raw  # the original PNG is smaller: keep it (the caller renames to .png)
    return data


def out_name(rel: str, data: bytes) -> str:
    """``.webp`` names hold WebP; a kept PNG gets ``.png``."""
    return rel[: -len(".webp")] + ".png" if rel.endswith(".webp") and data[:4] == b"\x89PNG" else rel


def tree_bytes(repo: Path, carry: Path, exclude: frozenset[str] = frozenset()) -> tuple[int, int]:
    """(bytes git would send from the checkout, bytes under ``carry``); ``exclude``: paths held out.

    Outside a git checkout every file but ``.git`` and ``carry`` counts (an over-estimate).
    """
    try:
        res = subprocess.run(
            ["git", "-C", str(repo), "ls-files", "-z", "-c", "-o", "--exclude-standard"],
            capture_output=True,
            check=True,
        )
        names = {n for n in res.stdout.decode("utf-8", "surrogateescape").split("\0") if n}
    except (OSError, subprocess.CalledProcessError):
        names = {
            p.relative_to(repo).as_posix()
            for p in repo.rglob("*")
            if p.is_file() and not p.is_relative_to(carry) and ".git" not in p.relative_to(repo).parts
        }
    repo_bytes = 0
    for n in names - exclude:
        p = repo / n
        if p.is_file() and not p.is_symlink():
            repo_bytes += p.stat().st_size
    shared = repo / "shared"  # a shared/ inside the checkout travels too
    if shared.is_dir():
        repo_bytes += sum(p.stat().st_size for p in shared.rglob("*") if p.is_file() and not p.is_symlink())
    carry_bytes = sum(p.stat().st_size for p in carry.rglob("*") if p.is_file()) if carry.is_dir() else 0
    return repo_bytes, carry_bytes


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=False)


def tracked_weights(repo: Path) -> list[Path]:
    """The shipped weights files git tracks (relative to ``repo``), whether present or not."""
    res = _git(repo, "ls-files", "--", f"{WEIGHTS.as_posix()}/*.safetensors")
    if res.returncode != 0:
        raise PackError(f"{repo}: not a git checkout: cannot hold out or restore tracked weights")
    return [Path(n) for n in res.stdout.splitlines() if n]


def hold_weights(repo: Path, names: list[str], dry_run: bool = False) -> list[Path]:
    """Delete the named tracked weights files (``all``: every one) from the working tree; git keeps them.

    Only files equal to the committed ones: :func:`restore_weights` brings back exactly those.
    """
    files = tracked_weights(repo)
    unknown = sorted(set(names) - {"all"} - {f.stem for f in files})
    if unknown:
        raise PackError(f"--hold-weights: no tracked weights named {', '.join(unknown)} in {WEIGHTS}")
    chosen = files if "all" in names else [f for f in files if f.stem in names]
    for f in chosen:
        if (repo / f).exists() and _git(repo, "diff", "--quiet", "HEAD", "--", str(f)).returncode != 0:
            raise PackError(f"{f}: differs from the committed file: commit or restore it before holding it out")
    for f in chosen if not dry_run else ():
        (repo / f).unlink(missing_ok=True)
    return chosen


def restore_weights(repo: Path, only: list[Path] | None = None) -> list[Path]:
    """Check out from HEAD every tracked weights file (of ``only``) missing from the working tree; verify it."""
    missing = [f for f in tracked_weights(repo) if not (repo / f).exists() and (only is None or f in only)]
    if missing:
        res = _git(repo, "checkout", "HEAD", "--", *map(str, missing))
        if res.returncode != 0:
            raise PackError(f"git checkout of {', '.join(map(str, missing))} failed: {res.stderr.strip()}")
    for f in missing:
        if not (repo / f).is_file() or _git(repo, "diff", "--quiet", "HEAD", "--", str(f)).returncode != 0:
            raise PackError(f"{f}: not restored to the committed file")
    return missing


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Example: python scripts/pack_training_data.py --profile default",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--profile",
        default="default",
        choices=["default", "real"],
        help="what to pack: default (T91 + BSD200 + BSDS500-test, Kodak24 crops) or real (the City100 training "
        "pairs of both cameras, the same HR images, Kodak24-mixed crops) (default: default)",
    )
    ap.add_argument(
        "--pair-crop",
        type=int,
        default=PAIR_CROP,
        help=f"real: side of the central square kept of each training pair, pixels (default: {PAIR_CROP})",
    )
    ap.add_argument(
        "--source",
        type=Path,
        default=REPO.parent / "shared" / "datasets",
        help="the datasets folder (default: ../shared/datasets beside the repository)",
    )
    ap.add_argument(
        "--repo",
        type=Path,
        default=REPO,
        help="the checkout whose travelling tree is measured, with its carry/ (default: this one)",
    )
    ap.add_argument(
        "--dest",
        type=Path,
        default=None,
        help="output folder, owned by this script: other files in it are removed (default: REPO/carry/data)",
    )
    ap.add_argument(
        "--budget-mib",
        type=float,
        default=64.0,
        help="the device tool's limit on the travelling tree, MiB (default: 64)",
    )
    ap.add_argument(
        "--margin-mib", type=float, default=1.0, help="kept free under the budget for files added later (default: 1)"
    )
    ap.add_argument(
        "--reserve-mib",
        type=float,
        default=0.0,
        help="MiB to count for files not there yet, e.g. 15.1 per fp16 lite weights file (default: 0)",
    )
    ap.add_argument(
        "--hold-weights",
        metavar="NAMES",
        default=None,
        help="before measuring, delete these tracked weights files from the checkout so they do not travel "
        "(comma-separated names such as real, or all; git keeps them: bring them back with --restore-weights)",
    )
    ap.add_argument(
        "--restore-weights",
        action="store_true",
        help="only check out again every tracked weights file missing from the checkout, then exit",
    )
    ap.add_argument("--dry-run", action="store_true", help="encode and measure, but write and delete nothing")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    repo = args.repo.resolve()
    try:
        if args.restore_weights:
            back = restore_weights(repo)
            print(f"restored {', '.join(map(str, back))}" if back else "no weights file was missing")
            return 0
        args.held = []
        if args.hold_weights:
            names = [n.strip() for n in args.hold_weights.split(",") if n.strip()]
            args.held = hold_weights(repo, names, dry_run=args.dry_run)
            verb = "would hold" if args.dry_run else "held"
            print(f"{verb} out of the transfer: {', '.join(map(str, args.held)) or 'nothing'} (--restore-weights)")
        return pack(args)
    except PackError as exc:
        print(f"pack_training_data: error: {exc}", file=sys.stderr)
        if getattr(args, "held", None) and not args.dry_run:
            with contextlib.suppress(PackError):
                restore_weights(repo, only=args.held)  # nothing was packed: put back what this run held out
        return 2


def pack(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    repo: Path = args.repo.resolve()
    carry = repo / "carry"
    dest: Path = (args.dest or carry / "data").resolve()
    source: Path = args.source.resolve()
    if args.pair_crop < 64:
        raise PackError(f"--pair-crop {args.pair_crop}: at least 64 pixels (a training patch is cut from it)")
    groups = plan(args.profile, source, args.pair_crop)
    manifest_path = dest / MANIFEST
    if dest.is_dir() and any(dest.iterdir()) and not manifest_path.is_file():
        raise PackError(
            f"{dest}: not empty and holds no {MANIFEST}: not a folder this script made; choose another --dest"
        )
    old: dict[str, dict] = {}
    if manifest_path.is_file():
        try:
            old = json.loads(manifest_path.read_text(encoding="utf-8")).get("files", {})
        except (ValueError, AttributeError):
            old = {}

    # 1. encode (or reuse) every planned file; keep the bytes of new ones in memory until the budget check
    entries: list[list[tuple[str, dict, bytes | None]]] = []
    total = sum(len(g.items) for g in groups)
    bar = tqdm(total=total, desc=f"pack {args.profile}", unit="img", file=sys.stderr, disable=args.quiet)
    for g in groups:
        rows = []
        for src, rel, how in g.items:
            digest = sha256(src)
            names = (rel, rel.removesuffix(".webp") + ".png") if rel.endswith(".webp") else (rel,)
            hit = next(((n, old[n]) for n in names if n in old), None)  # by name: sources can be duplicates
            if (
                hit is not None
                and hit[1].get("source_sha256") == digest
                and hit[1].get("how") == how
                and (dest / hit[0]).is_file()
                and (dest / hit[0]).stat().st_size == hit[1].get("bytes")
            ):
                rows.append((hit[0], hit[1], None))
            else:
                data = encode(src, how)
                name = out_name(rel, data)
                meta = {
                    "source": src.relative_to(source).as_posix(),
                    "source_sha256": digest,
                    "how": how,
                    "bytes": len(data),
                }
                rows.append((name, meta, data))
            bar.update(1)
        entries.append(rows)
    bar.close()

    # 2. the budget: everything that travels, with this profile's files in place of carry/data's
    repo_bytes, carry_bytes = tree_bytes(repo, carry, frozenset(f.as_posix() for f in getattr(args, "held", [])))
    in_dest = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file()) if dest.is_dir() else 0
    other_carry = carry_bytes - in_dest if dest.is_relative_to(carry) else carry_bytes
    limit = (args.budget_mib - args.margin_mib) * MIB
    fixed = repo_bytes + other_carry + args.reserve_mib * MIB + 64 * 1024  # + the manifest
    counts = [len(r) for r in entries]

    def size() -> float:
        return fixed + sum(e[1]["bytes"] for r, n in zip(entries, counts) for e in r[:n])

    order = sorted(range(len(groups)), key=lambda i: groups[i].trim_rank)
    for i in order:
        while size() > limit and counts[i] - groups[i].unit >= groups[i].min_keep:
            counts[i] -= groups[i].unit
    over = size() > limit
    print(f"{'group':34s} {'files':>11s} {'MiB':>8s}")
    for g, r, n in zip(groups, entries, counts):
        mib = sum(e[1]["bytes"] for e in r[:n]) / MIB
        note = f"  (trimmed: {len(r) - n} dropped from the end)" if n < len(r) else ""
        print(f"{g.name:34s} {n:5d}/{len(r):<5d} {mib:8.2f}{note}")
    print(
        f"travelling tree: repository {repo_bytes / MIB:.2f} MiB + carry/ {(size() - repo_bytes) / MIB:.3f} MiB"
        f" (reserve {args.reserve_mib:.2f}) = {size() / MIB:.3f} MiB of {args.budget_mib:g} MiB"
        f" ({args.margin_mib:g} MiB margin)"
    )
    if over:
        raise PackError(
            f"the travelling tree would be {size() / MIB:.2f} MiB, over {limit / MIB:.2f} MiB even after "
            "trimming: remove files from the checkout or carry/, or pack less"
        )
    if args.dry_run:
        print("dry run: nothing written")
        return 0

    # 3. write the kept files, drop everything else under dest, then the manifest
    keep: dict[str, dict] = {}
    for r, n in zip(entries, counts):
        for name, meta, data in r[:n]:
            if data is not None:
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                with atomic_path(dest / name) as tmp:
                    tmp.write_bytes(data)
            keep[name] = meta
    if dest.is_dir():
        for p in sorted(dest.rglob("*"), reverse=True):
            rel = p.relative_to(dest).as_posix()
            if p.is_file() and rel not in keep and rel != MANIFEST:
                p.unlink()
            elif p.is_dir() and not any(p.iterdir()):
                shutil.rmtree(p)
    with atomic_path(manifest_path) as tmp:
        tmp.write_text(
            json.dumps({"profile": args.profile, "files": dict(sorted(keep.items()))}, indent=1) + "\n",
            encoding="utf-8",
        )
    repo_bytes, carry_bytes = tree_bytes(repo, carry)
    print(
        f"wrote {dest}: {len(keep)} files; travelling tree now {(repo_bytes + carry_bytes) / MIB:.2f} MiB "
        f"(repository {repo_bytes / MIB:.2f} + carry/ {carry_bytes / MIB:.2f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
