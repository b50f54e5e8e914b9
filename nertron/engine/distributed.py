"""Tag one big file with several processes (GPUs, or CPU processes) under ``torchrun``.

``nertron tag --input FILE --output FILE`` switches to this module when it runs under
``torchrun`` (``WORLD_SIZE`` > 1 in the environment). Each rank:

1. takes every ``world_size``-th line of the input (line ``i`` goes to rank
   ``i % world_size``), reading the file as a stream and decoding only its own lines;
2. tags them with its own ``Tagger`` on ``cuda:LOCAL_RANK`` (CPU when there is no GPU, or
   with ``--device cpu``) and writes its results, in order, to a shard file beside the output
   (``.OUTPUT.shard-RANK-of-WORLD``);
3. the ranks agree that every shard is complete (a one-number all-reduce); rank 0 then
   interleaves the shards back into input order and writes the output atomically (a
   temporary file renamed over it: an existing output is replaced only by a complete one);
   a second agreement lets every rank exit once the output exists.

The input and output are checked on every rank before the model is loaded (the output may
not be the input). When a rank fails (a bad line in its share, a crash in tagging), every
rank learns it at the next agreement, deletes its shard and stops with an error; the output
is left as it was. ``SIGTERM`` (torchrun stopping the job) also removes the shards.

The processes only coordinate, so the process group is ``gloo`` over TCP whatever the
device; no tensors but one status number travel between ranks. The output equals the
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

import contextlib
import datetime
import os
import signal
import threading
import time
from pathlib import Path
from typing import IO, Any, Iterator

import torch

from nertron.engine.files import open_atomic
from nertron.engine.progress import shown as progress_shown
from nertron.engine.tagger import (DEFAULT_BATCH_TOKENS, Tagger, check_input, check_output, file_progress,
                                   format_record, read_lines, resolve_device)

__all__ = ["distributed_env", "shard_path", "write_shard", "merge_shards", "tag_file_distributed", "RankFailed"]


class RankFailed(RuntimeError):
    """Another torchrun rank failed (its own error is printed by that rank)."""

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
                format: str = "jsonl", batch_tokens: int | None = None, progress: bool = False) -> int:
    """Tag lines ``rank, rank + world_size, ...`` of ``in_path`` into ``shard``, in order
    (``progress``: a bar on stderr over this rank's lines).

    Returns:
        The number of lines this rank tagged.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown output format {format!r} for distributed tagging; expected jsonl or conll")
    count = 0
    lines = read_lines(in_path, stride=world_size, offset=rank)
    bar = file_progress(in_path, progress, stride=world_size, offset=rank,
                        desc=f"tagging (rank {rank} of {world_size})")
    with open_atomic(shard) as out:
        for text, result in tagger.tag_lines(lines, batch_tokens, progress=bar):
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
        with open_atomic(os.path.realpath(out_path)) as out:  # replaced only by a complete, checked merge
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
                         timeout: datetime.timedelta = datetime.timedelta(hours=24), progress: bool | None = None) -> int:
    """Tag ``in_path`` into ``out_path`` with every torchrun rank (see the module doc).

    Args:
        in_path: UTF-8 text, one text per line, readable by every rank.
        out_path: the merged output (``jsonl`` or ``conll``), in a directory every rank can write.
        model, dtype, checkpoint, batch_tokens: as ``Tagger.load``.
        device: None: ``cuda:LOCAL_RANK`` when CUDA is available, else CPU.
        timeout: how long a rank may wait at a barrier for the slowest one.
        progress: rank 0 shows a progress bar on stderr over its share of the lines (None:
            when stderr is a terminal).

    Returns:
        The number of lines this rank tagged (rank 0 after merging: all of them).

    Raises:
        ValueError, FileNotFoundError: a bad input or output (checked before anything is
            loaded), a bad line in this rank's share of the input.
        RankFailed: another rank failed; no output is written and the shards are removed.
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
    check_input(in_path, stdin=False)
    check_output(out_path, in_path)
    if device is None:
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    device = resolve_device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    created = not dist.is_initialized()
    if created:
        dist.init_process_group(backend="gloo", timeout=timeout)
    shards = [shard_path(out_path, r, world) for r in range(world)]
    try:
        with _sigterm_raises():
            def tag_shard() -> int:
                tagger = Tagger.load(model, device=device, dtype=dtype, checkpoint=checkpoint,
                                     batch_tokens=batch_tokens)
                return write_shard(tagger, in_path, shards[rank], rank, world, format, batch_tokens,
                                   progress=rank == 0 and progress_shown(progress))

            count = _in_step(tag_shard, rank, world, timeout,
                             lambda failed: f"rank(s) {', '.join(map(str, failed))} of {world} failed (see their "
                             f"error); {out_path} was not written")
            merged = _in_step(lambda: merge_shards(shards, out_path, format) if rank == 0 else None, rank, world,
                              timeout, lambda failed: f"rank 0 failed to merge the shards into {out_path} (see its error)")
            return merged if rank == 0 else count
    finally:
        for shard in shards if rank == 0 else shards[rank:rank + 1]:
            shard.unlink(missing_ok=True)
        if created:
            dist.destroy_process_group()


def _in_step(step, rank: int, world: int, timeout: datetime.timedelta, message) -> Any:
    """Run ``step()`` on every rank, then agree on the outcome: this rank's own error is raised
    as is; another rank's failure raises ``RankFailed(message(failed_ranks))`` here too."""
    error: BaseException | None = None
    result = None
    try:
        result = step()
    except Exception as err:
        error = err
    failed = _failed_ranks(error is not None, rank, world, timeout)
    if error is not None:
        raise error
    if failed:
        raise RankFailed(message(failed))
    return result


def _failed_ranks(failed: bool, rank: int, world: int, timeout: datetime.timedelta) -> list[int]:
    """Every rank's status, gathered by all: the ranks that failed. Waits by polling, so that
    signal handlers (SIGTERM) run while a rank waits for the slowest one."""
    import torch.distributed as dist

    status = torch.zeros(world, dtype=torch.int32)
    status[rank] = int(failed)
    work = dist.all_reduce(status, op=dist.ReduceOp.SUM, async_op=True)
    deadline = time.monotonic() + timeout.total_seconds()
    while not work.is_completed():
        if time.monotonic() > deadline:
            raise RankFailed(f"rank {rank}: timed out after {timeout} waiting for the other ranks")
        time.sleep(0.02)
    work.wait()
    return [r for r in range(world) if status[r]]


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM (torchrun stopping the other ranks after a failure) raises SystemExit, so the
    ``finally`` blocks run and no shard or temporary file is left behind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
