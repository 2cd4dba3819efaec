"""Throughput of the backup object format, relative to plain SHA-256 on the same machine.

Absolute MB/s depend on the machine; the ratio to ``hashlib.sha256`` (which the backup has to
compute anyway) is what stays comparable across runs. Run:

    python bench/bench_object_format.py [--mb 256] [--threads 0]

Inputs: "text" is COPY-like rows (compresses ~4-6x), "noise" is random bytes (incompressible,
the worst case for the AEAD share of the work).

Baseline (shared 2-core AMD EPYC VM, 128 MB, zstd level 3, threads=0; noisy, so read ratios):
text  encode ~90 MB/s (0.10x sha256), decode ~230-420 MB/s (0.25-0.45x); zstd itself ~93 MB/s
noise encode ~380 MB/s (0.21x sha256), decode ~400 MB/s (0.22x)

No database is involved, so the PostgreSQL version does not enter. Same VM with a test suite
running beside it, defaults (256 MB, zstd level 1, threads=0): text encode 275 MB/s (0.14x
sha256), decode 592 MB/s (0.30x), 3.0:1; noise encode 410 MB/s (0.27x), decode 441 MB/s (0.29x).
"""

from __future__ import annotations

import argparse
import hashlib
import random
import time
from collections.abc import Callable, Iterator

from hardening_pipeline.backup.crypto import generate_data_key
from hardening_pipeline.backup.object_format import ZSTD_LEVEL, ObjectDecoder, ObjectEncoder

PIECE = 1 << 16


def text_pieces() -> list[bytes]:
    rng = random.Random(1)
    words = [rng.randbytes(rng.randrange(3, 12)).hex() for _ in range(2000)]
    rows = []
    size = 0
    i = 0
    while size < PIECE * 64:  # a 4 MiB pool of rows, cycled
        row = f"{i}\t{rng.choice(words)} {rng.choice(words)}\t{rng.randrange(10**9)}\t\\N\n"
        rows.append(row)
        size += len(row)
        i += 1
    pool = "".join(rows).encode()
    return [pool[j : j + PIECE] for j in range(0, len(pool) - PIECE, PIECE)]


def noise_pieces() -> list[bytes]:
    rng = random.Random(2)
    return [rng.randbytes(PIECE) for _ in range(64)]


def stream(pool: list[bytes], total: int) -> Iterator[bytes]:
    for i in range(total // PIECE):
        yield pool[i % len(pool)]


def timed(fn: Callable[[], object], repeat: int = 2) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def sha(pool: list[bytes], total: int) -> None:
    digest = hashlib.sha256()
    for piece in stream(pool, total):
        digest.update(piece)


def encode(pool: list[bytes], total: int, key: bytes, threads: int) -> tuple[list[bytes], float]:
    enc = ObjectEncoder(
        stream(pool, total), key, backup_id="bench", object_name="bench.hpb", threads=threads
    )
    chunks = list(enc)
    return chunks, enc.plaintext_bytes / enc.ciphertext_bytes


def decode(chunks: list[bytes], key: bytes) -> None:
    for _ in ObjectDecoder(chunks, key, backup_id="bench", object_name="bench.hpb"):
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--mb", type=int, default=256, help="plaintext megabytes per run")
    parser.add_argument(
        "--threads", type=int, default=None, help="zstd threads (default: 0 and -1)"
    )
    args = parser.parse_args()
    total = args.mb * 1_000_000 // PIECE * PIECE
    key = generate_data_key()
    thread_choices = [args.threads] if args.threads is not None else [0, -1]

    print(f"{total / 1e6:.0f} MB per run, best of 2, 1 MiB segments, zstd level {ZSTD_LEVEL}")
    for label, pool in (("text", text_pieces()), ("noise", noise_pieces())):
        seconds, _ = timed(lambda pool=pool: sha(pool, total))
        baseline = total / seconds / 1e6
        print(f"\n[{label}] hashlib.sha256 baseline: {baseline:8.1f} MB/s")
        for threads in thread_choices:
            seconds, result = timed(lambda pool=pool, t=threads: encode(pool, total, key, t))
            chunks, ratio = result  # type: ignore[misc]
            enc_rate = total / seconds / 1e6
            seconds, _ = timed(lambda chunks=chunks: decode(chunks, key))
            dec_rate = total / seconds / 1e6
            print(
                f"  threads={threads:>2}  encode {enc_rate:7.1f} MB/s ({enc_rate / baseline:4.2f}x "
                f"sha256)  decode {dec_rate:7.1f} MB/s ({dec_rate / baseline:4.2f}x sha256)  "
                f"compression {ratio:4.1f}:1"
            )


if __name__ == "__main__":
    main()
