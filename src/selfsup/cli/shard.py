"""``selfsup shard FOLDER OUT_DIR``: an image folder as WebDataset-style tar shards that ``--data OUT_DIR`` reads
(data/shard_write.py; docs/practitioner.md, "Sharded datasets")."""
from __future__ import annotations

import argparse

DEFAULT_PER_SHARD = 1000  # data.shard_write.write_shards's defaults, without importing torch for --help
DEFAULT_MAX_BYTES = 8 << 20


def cmd_shard(args: argparse.Namespace) -> int:
    from ..errors import ConfigError

    for flag, v in (("--images-per-shard", args.images_per_shard), ("--max-image-bytes", args.max_image_bytes)):
        if v < 1:
            raise ConfigError(f"{flag} must be >= 1, got {v}")
    from ..data.shard_write import write_shards

    for s in write_shards(args.folder, args.out_dir, images_per_shard=args.images_per_shard,
                          max_bytes_per_image=args.max_image_bytes):
        labels = f"{len(s.classes)} classes" if s.classes else "unlabelled"
        print(f"wrote {s.images} images in {s.shards} shards ({labels}, {s.channels} channels; {s.reencoded} "
              f"re-encoded to fit --max-image-bytes, {s.skipped} skipped) → {s.out_dir}", flush=True)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("shard", help="write an image folder as tar shards (--data reads the shard folder)",
                       description="Write FOLDER's images (class subfolders give labels; a folder of train/ and "
                       "val/ gives two shard folders) as shard-000000.tar, ... plus index.json into OUT_DIR, which "
                       "must be new or empty. Images keep their original bytes; one over --max-image-bytes is "
                       "re-encoded as a smaller JPEG; unreadable ones are skipped with a counted warning.")
    p.add_argument("folder", help="image folder (root/<class>/<image> or flat)")
    p.add_argument("out_dir", help="new or empty folder for the shards and index.json")
    p.add_argument("--images-per-shard", type=int, default=DEFAULT_PER_SHARD,
                   help=f"images in each shard (default {DEFAULT_PER_SHARD}; the last one holds the rest)")
    p.add_argument("--max-image-bytes", type=int, default=DEFAULT_MAX_BYTES,
                   help=f"size cap of one image's bytes (default {DEFAULT_MAX_BYTES}); larger ones are re-encoded "
                        "as JPEG, downscaled as far as needed, or skipped when even 16 px does not fit")
    p.set_defaults(fn=cmd_shard)
    return p
