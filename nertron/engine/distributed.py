"""Tag one big file with several processes (GPUs, or CPU processes) under ``torchrun``.

``nertron tag --input FILE --output FILE`` switches to this module when it runs under
``torchrun`` (``WORLD_SIZE`` > 1 in the environment). Each rank:

1. takes every ``world_size``-th line of the input (line ``i`` goes to rank
   ``i % world_size``), reading the file as a stream and decoding only its own lines;
2. tags them with its own ``Tagger`` on ``cuda:LOCAL_RANK`` (CPU when there is no GPU, or
   with ``--device cpu``) and writes its results, in order, to a shard file beside the output
   (``.OUTPUT.shard-RANK-of-WORLD``);
3. waits at a barrier; rank 0 then interleaves the shards back into input order, writes the
   output and deletes the shards; a second barrier lets every rank exit once the output
   exists.

The processes only coordinate (two barriers), so the process group is ``gloo`` over TCP
whatever the device; no tensors travel between ranks. The output equals the
single-process ``nertron tag --input FILE --output FILE`` line for line.

One machine, 8 GPUs::

    torchrun --nproc_per_node=8 -m nertron tag --input big.txt --output big.jsonl

CPU only, 4 processes (each with its own threads; set ``OMP_NUM_THREADS``)::

    OMP_NUM_THREADS=4 torchrun --nproc_per_node=4 -m nertron tag --input big.txt --output big.jsonl --device cpu

Several machines: run the same command on every node with torchrun's rendezvous; the input
must be readable and the output directory writable by every node at the same path (a
shared file system: rank 0 merges the other nodes' shard files)::

    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 \\
        --rdzv-id=tag-big -m nertron tag --input /shared/big.txt --output /shared/big.jsonl

``HOST`` is one of the nodes (reachable by all on that port); ``--rdzv-id`` is any job name
shared by the nodes. ``--nnodes=1:4`` lets the job start with fewer nodes.
"""
from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import IO, Iterator

import torch

from nertron.engine.tagger import DEFAULT_BATCH_TOKENS, Tagger, format_record, read_lines

__all__ = ["distributed_env", "shard_path", "write_shard", "merge_shards", "tag_file_distributed"]

FORMATS = ("jsonl", "conll")


def distributed_env() -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` from torchrun's environment; None outside torchrun
    or with a single process.

    Raises:
        ValueError: ``RANK``/``WORLD_SIZE`` set but not valid integers.
    """
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return None
    try:
        world = int(os.environ["WORLD_SIZE"])
        rank = int(os.environ["RANK"])
        local = int(os.environ.get("LOCAL_RANK", rank))
    except ValueError:
        raise ValueError(f"bad torchrun environment: RANK={os.environ.get('RANK')!r}, "
                         f"WORLD_SIZE={os.environ.get('WORLD_SIZE')!r}, LOCAL_RANK={os.environ.get('LOCAL_RANK')!r}") from None
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"bad torchrun environment: RANK={rank} with WORLD_SIZE={world}")
    return None if world == 1 else (rank, world, local)


def shard_path(out_path: str | Path, rank: int, world_size: int) -> Path:
    """Where rank ``rank`` writes its results: a hidden file beside the output."""
    out_path = Path(out_path)
    return out_path.with_name(f".{out_path.name}.shard-{rank:05d}-of-{world_size:05d}")


def write_shard(tagger: Tagger, in_path: str | Path, shard: str | Path, rank: int, world_size: int,
                format: str = "jsonl", batch_tokens: int | None = None) -> int:
    """Tag lines ``rank, rank + world_size, ...`` of ``in_path`` into ``shard``, in order.

    Returns:
        The number of lines this rank tagged.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown output format {format!r} for distributed tagging; expected jsonl or conll")
    count = 0
    with open(shard, "w", encoding="utf-8", newline="\n") as out:
        for text, result in tagger.tag_lines(read_lines(in_path, stride=world_size, offset=rank), batch_tokens):
            out.write(format_record(text, result, format))
            count += 1
    return count


def _records(handle: IO[str], format: str) -> Iterator[str]:
    """The records of a shard: JSON lines, or CoNLL blocks ending with a blank line."""
    if format == "jsonl":
        yield from handle
        return
    block: list[str] = []
    for line in handle:
        block.append(line)
        if line == "\n":
            yield "".join(block)
            block = []
    if block:
        raise ValueError(f"{handle.name}: truncated CoNLL shard (no blank line after the last text)")


def merge_shards(shards: list[str | Path], out_path: str | Path, format: str = "jsonl") -> int:
    """Interleave round-robin shards back into input order: record ``i`` is the
    ``i // n``-th record of shard ``i % n``.

    Returns:
        The number of records written.

    Raises:
        ValueError: shards whose record counts do not fit a round-robin split (a rank
            failed or a shard belongs to another run).
    """
    if format not in FORMATS:
        raise ValueError(f"unknown output format {format!r}; expected jsonl or conll")
    handles = [open(path, encoding="utf-8", newline="\n") for path in shards]
    try:
        readers = [_records(handle, format) for handle in handles]
        count = 0
        with open(out_path, "w", encoding="utf-8", newline="\n") as out:
            while True:
                record = next(readers[count % len(readers)], None)
                if record is None:
                    break
                out.write(record)
                count += 1
        leftover = [str(shards[k]) for k, reader in enumerate(readers) if next(reader, None) is not None]
        if leftover:
            raise ValueError(f"shard {shards[count % len(readers)]} ended after {count // len(readers)} records "
                             f"but {', '.join(leftover)} hold more: the shards are not one round-robin split")
        return count
    finally:
        for handle in handles:
            handle.close()


def tag_file_distributed(in_path: str | Path, out_path: str | Path, format: str = "jsonl",
                         model: str | Path | None = None, device: str | None = None, dtype: str | None = None,
                         checkpoint: str | Path | None = None, batch_tokens: int = DEFAULT_BATCH_TOKENS,
                         timeout: datetime.timedelta = datetime.timedelta(hours=24)) -> int:
    """Tag ``in_path`` into ``out_path`` with every torchrun rank (see the module doc).

    Args:
        in_path: UTF-8 text, one text per line, readable by every rank.
        out_path: the merged output (``jsonl`` or ``conll``), in a directory every rank can write.
        model, dtype, checkpoint, batch_tokens: as ``Tagger.load``.
        device: None: ``cuda:LOCAL_RANK`` when CUDA is available, else CPU.
        timeout: how long a rank may wait at a barrier for the slowest one.

    Returns:
        The number of lines this rank tagged (rank 0 after merging: all of them).
    """
    import torch.distributed as dist

    env = distributed_env()
    if env is None:
        raise ValueError("tag_file_distributed runs under torchrun with more than one process "
                         "(RANK and WORLD_SIZE unset or WORLD_SIZE=1); use Tagger.tag_file otherwise")
    rank, world, local = env
    if format not in FORMATS:
        raise ValueError(f"unknown output format {format!r} for distributed tagging; expected jsonl or conll")
    if str(out_path) == "-":
        raise ValueError("distributed tagging writes a file: give --output FILE, not standard output")
    if device is None:
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    created = not dist.is_initialized()
    if created:
        dist.init_process_group(backend="gloo", timeout=timeout)
    try:
        tagger = Tagger.load(model, device=device, dtype=dtype, checkpoint=checkpoint, batch_tokens=batch_tokens)
        shards = [shard_path(out_path, r, world) for r in range(world)]
        count = write_shard(tagger, in_path, shards[rank], rank, world, format)
        dist.barrier()
        if rank == 0:
            count = merge_shards(shards, out_path, format)
            for shard in shards:
                shard.unlink()
        dist.barrier()
        return count
    finally:
        if created:
            dist.destroy_process_group()
