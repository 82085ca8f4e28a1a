"""A step-by-step model of vLLM's scheduler: a waiting queue, a batch of at most ``max_num_seqs``,
chunked prefill under a token budget, one decoded token per running sequence per step.

Nothing is computed: each step sleeps for the time the model assigns to the work in it (see
:mod:`simulator.params`), so many simulated servers can share a couple of CPU cores. A single task per
engine drives all steps; requests just wait on their own queue or future, so the CPU spent per step
is proportional to the batch, not to wall time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from simulator.kvcache import BlockPool, BlockTable
from simulator.lora import LoraRegistry
from simulator.params import SimParams

log = logging.getLogger(__name__)


@dataclass(eq=False, slots=True)
class Sequence:
    request_id: str
    prompt_tokens: int
    hashes: list[int]  # chained hashes of the prompt's full blocks
    max_tokens: int
    # Keys of the blocks past the prompt's full ones (the prompt's tail, then generated tokens):
    # called with how many such blocks need keys, it returns the keys of all of them. vLLM caches
    # every full block a request computed, generated tokens included (vllm/v1/request.py appends
    # block hashes as output tokens arrive; kv_cache_manager.py allocate_slots caches up to
    # request.num_tokens), so those blocks take cache space and publish BlockStored too. None:
    # the sequence cannot name them, and its output blocks stay private.
    output_keys: Callable[[int], list[int]] | None = None
    # P/D decode side: another instance prefilled this prompt and its KV was pulled; the full
    # blocks among it (``transferred_hashes``) are installed as computed on admission.
    remote_prefilled: bool = False
    transferred_hashes: list[int] = field(default_factory=list)
    # Keep the blocks after finishing, for a remote decoder to pull (P/D prefill side).
    hold_blocks: bool = False
    # Why the sequence ends when it reaches max_tokens: "length" for an explicit limit, "stop" when
    # the limit stands in for the EOS a real model would emit.
    limit_reason: str = "length"
    # The LoRA adapter the request names (None: the base model).
    lora: str | None = None
    arrival: float = field(default_factory=time.monotonic)

    table: BlockTable = field(default_factory=BlockTable)
    cached_tokens: int = 0
    external_cached_tokens: int = 0
    computed: int = 0  # context tokens whose KV exists (cached + prefilled)
    output_hashes: list[int] = field(default_factory=list)  # what output_keys last returned
    generated: int = 0
    admitted_at: float | None = None
    prefill_done_at: float | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None
    finished_at: float | None = None
    finish_reason: str | None = None
    aborted: bool = False
    # Token positions as they are produced (None = finished); only read for streaming requests.
    tokens: asyncio.Queue[int | None] = field(default_factory=asyncio.Queue)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def context_tokens(self) -> int:
        return self.prompt_tokens + self.generated

    @property
    def prefilling(self) -> bool:
        return self.computed < self.prefill_target

    def block_keys(self, count: int) -> list[int]:
        """The keys of the sequence's first ``count`` full blocks (fewer when it cannot name them)."""
        hashes = self.hashes
        if count <= len(hashes) or self.output_keys is None:
            return hashes[:count]
        more = count - len(hashes)
        if len(self.output_hashes) < more:
            self.output_hashes = self.output_keys(more)
        return hashes + self.output_hashes[:more]

    @property
    def prefill_target(self) -> int:
        # After a preemption the generated tokens are recomputed too (vLLM's recompute mode).
        return self.prompt_tokens + max(0, self.generated - 1) if self.generated else self.prompt_tokens


class EngineObserver:
    """Hooks the metrics layer implements; the engine reports facts, it does not format them."""

    def on_scheduled(self, seq: Sequence) -> None: ...
    def on_first_token(self, seq: Sequence) -> None: ...
    def on_token(self, seq: Sequence, gap_s: float) -> None: ...
    def on_finished(self, seq: Sequence) -> None: ...
    def on_preempted(self, seq: Sequence) -> None: ...
    def on_lora_load(self, adapter: str) -> None: ...


class RequestTooLarge(ValueError):
    pass


class EngineDead(RuntimeError):
    """The engine loop has ended: nothing submitted now would ever run."""


class Engine:
    def __init__(
        self,
        params: SimParams,
        observer: EngineObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.params = params
        self.pool = BlockPool(params.num_blocks)
        self.observer = observer or EngineObserver()
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.steps = 0
        # Injectable so tests can run the engine on a virtual clock, deterministically.
        self._clock = clock
        self._sleep = sleep
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._preempted_this_step: set[Sequence] = set()
        self.lora = (
            LoraRegistry(
                params.model,
                params.lora_modules,
                max_loras=params.max_loras,
                runtime_updates=params.runtime_lora_updating,
            )
            if params.enable_lora
            else None
        )
        self._pending_load_s = 0.0  # adapter loads of this step's admissions, paid in its time
        self.step_failures = 0
        self.dead: BaseException | None = None  # why the loop ended, if it ever does

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="sim-engine")
        self._task.add_done_callback(self._engine_ended)

    @property
    def healthy(self) -> bool:
        return self._task is not None and not self._task.done()

    def _engine_ended(self, task: asyncio.Task[None]) -> None:
        """The loop only ends by cancellation (stop()); anything else must be loud: vLLM's
        /health reports a dead engine, and so does the simulator's (server.py)."""
        if task.cancelled():
            return
        self.dead = task.exception() or RuntimeError("engine loop returned")
        log.critical("the engine loop died; every request will fail", exc_info=self.dead)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def submit(self, seq: Sequence) -> None:
        if self.dead is not None:
            raise EngineDead(f"the engine loop died: {self.dead!r}")
        blocks_needed = -(-(seq.prompt_tokens + seq.max_tokens) // self.params.block_size)
        if blocks_needed > self.params.num_blocks:
            raise RequestTooLarge(
                f"request needs {blocks_needed} KV blocks, the cache has {self.params.num_blocks}"
            )
        seq.arrival = self._clock()
        self.waiting.append(seq)
        self._wake.set()

    def abort(self, seq: Sequence) -> None:
        """The client went away: free the sequence's slot and blocks at the next step boundary."""
        if seq.finished_at is None:
            seq.aborted = True
            self._wake.set()

    # --- the loop ------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                busy = await self._step()
            except Exception:
                # A bug in one step must not stop the engine for good (it once froze a pod with
                # 62 requests waiting and an empty log): say so, fail what was in flight, go on.
                log.exception(
                    "engine step failed; aborting %d running and %d waiting requests",
                    len(self.running),
                    len(self.waiting),
                )
                self.step_failures += 1
                self._fail_all()
                continue
            if not busy:
                self._wake.clear()
                await self._wake.wait()

    async def _step(self) -> bool:
        """One engine step; False when there is nothing to run."""
        self._drop_aborted()
        self._admit()
        if not self.running:
            return False
        prefill_chunks, decoders = self._plan()
        p = self.params
        step = (
            p.step_overhead_s
            + p.prefill_per_token_s * sum(prefill_chunks.values())
            + p.decode_per_seq_s * len(decoders)
            + self._pending_load_s
        )
        self._pending_load_s = 0.0
        await self._sleep(step)
        self.steps += 1
        self._advance(prefill_chunks, decoders)
        return True

    def _fail_all(self) -> None:
        for seq in [*self.running, *self.waiting]:
            if seq.finished_at is None:
                self._finish(seq, "abort")
        self.running.clear()
        self.waiting.clear()

    def _drop_aborted(self) -> None:
        if any(seq.aborted for seq in self.waiting):
            for seq in [s for s in self.waiting if s.aborted]:
                self.waiting.remove(seq)
                self._finish(seq, "abort")
        for seq in [s for s in self.running if s.aborted]:
            self.running.remove(seq)
            self._finish(seq, "abort")

    def active_loras(self) -> set[str]:
        """The adapters of the running requests (what vLLM lists in vllm:lora_requests_info)."""
        return {seq.lora for seq in self.running if seq.lora is not None}

    def _admit(self) -> None:
        """First come, first served: the head waits until a slot and its blocks are free. A request
        whose adapter would exceed max_loras is passed over (it keeps its place) and the next one
        considered, as vLLM's scheduler skips LoRA-deferred requests."""
        deferred: list[Sequence] = []
        try:
            self._admit_in_order(deferred)
        finally:
            self.waiting.extendleft(reversed(deferred))

    def _admit_in_order(self, deferred: list[Sequence]) -> None:
        p = self.params
        while self.waiting and len(self.running) < p.max_num_seqs:
            seq = self.waiting[0]
            if (
                seq.lora is not None
                and self.lora is not None
                and not self.lora.fits(seq.lora, self.active_loras())
            ):
                deferred.append(self.waiting.popleft())
                continue
            # The last token is always computed (it yields the next output token), so a fully
            # cached prompt still leaves its final block to compute, as in vLLM. A sequence
            # resumed after a preemption matches its generated tokens' blocks too.
            cacheable = seq.block_keys((seq.context_tokens - 1) // p.block_size)
            matched = self.pool.cached_prefix(cacheable)
            needed = -(-(seq.context_tokens + 1) // p.block_size) - matched
            # Exact, as vLLM admits: matched blocks nobody holds are counted as allocatable, and
            # sharing them takes them out of that count.
            if needed + self.pool.free_cached(cacheable[:matched]) > self.pool.allocatable:
                break
            self.waiting.popleft()
            self.pool.acquire_prefix(seq.table, cacheable[:matched])
            self.pool.allocate(seq.table, needed)
            seq.cached_tokens = matched * p.block_size
            seq.computed = seq.cached_tokens
            if seq.remote_prefilled and seq.generated == 0:
                # Pulled KV covers the whole prompt (partial last block included); its full blocks
                # land in freshly allocated blocks and join the prefix cache. Only the last token
                # is left to run, to sample the first output token.
                pulled_blocks = min(len(seq.transferred_hashes), len(cacheable))
                self.pool.commit(seq.table, seq.hashes[matched:pulled_blocks])
                seq.external_cached_tokens = seq.prompt_tokens - seq.cached_tokens
                seq.computed = seq.prompt_tokens - 1
            seq.admitted_at = self._clock()
            if (
                seq.lora is not None
                and self.lora is not None
                and self.lora.use(seq.lora, self.active_loras())
            ):
                self._pending_load_s += p.lora_load_s
                self.observer.on_lora_load(seq.lora)
            self.running.append(seq)
            self.observer.on_scheduled(seq)

    def _plan(self) -> tuple[dict[Sequence, int], list[Sequence]]:
        budget = self.params.max_num_batched_tokens
        decoders = [seq for seq in self.running if not seq.prefilling]
        budget -= len(decoders)
        chunks: dict[Sequence, int] = {}
        for seq in self.running:
            if budget <= 0:
                break
            if seq.prefilling:
                chunk = min(seq.prefill_target - seq.computed, budget)
                chunks[seq] = chunk
                budget -= chunk
        return chunks, decoders

    def _advance(self, prefill_chunks: dict[Sequence, int], decoders: list[Sequence]) -> None:
        now = self._clock()
        for seq, chunk in prefill_chunks.items():
            if seq.aborted:
                continue
            seq.computed += chunk
            # Every full block this chunk completed joins the prefix cache now, not when the whole
            # prefill is done: vLLM caches a step's blocks when it schedules them
            # (vllm/v1/core/kv_cache_manager.py, allocate_slots -> cache_blocks) and publishes their
            # BlockStored events after that step, so a long prompt's first chunks are announced
            # (and shareable) while its later chunks still run.
            self._cache_computed(seq)
            if not seq.prefilling:
                seq.prefill_done_at = now
                if seq.generated == 0:
                    self._emit(seq, now)
                    self.observer.on_first_token(seq)
        self._preempted_this_step = set()
        for seq in decoders:
            if seq.aborted or seq.finished_at is not None or seq in self._preempted_this_step:
                continue
            if not self._grow(seq):
                continue
            seq.computed += 1
            self._emit(seq, now)
            self._cache_computed(seq)
        for seq in [s for s in self.running if s.generated >= s.max_tokens and not s.prefilling]:
            self.running.remove(seq)
            self._finish(seq, seq.limit_reason)

    def _cache_computed(self, seq: Sequence) -> None:
        """Cache every full block the sequence has computed (generated tokens' blocks included)."""
        done = seq.computed // self.params.block_size
        if done > len(seq.table.hashed):
            keys = seq.block_keys(done)
            self.pool.commit(seq.table, keys[len(seq.table.hashed) :])

    def _emit(self, seq: Sequence, now: float) -> None:
        if seq.first_token_at is None:
            seq.first_token_at = now
        else:
            self.observer.on_token(seq, now - (seq.last_token_at or now))
        seq.last_token_at = now
        seq.tokens.put_nowait(seq.generated)
        seq.generated += 1

    def _grow(self, seq: Sequence) -> bool:
        """Give the sequence a block for its next token, preempting the newest arrivals if needed."""
        needed = -(-(seq.context_tokens + 1) // self.params.block_size) - seq.table.size
        while needed > self.pool.allocatable:
            victim = self.running[-1]
            self.running.remove(victim)
            self.pool.release(victim.table)
            victim.computed = 0
            self.waiting.appendleft(victim)
            self._preempted_this_step.add(victim)
            self.observer.on_preempted(victim)
            if victim is seq:
                return False
        if needed > 0:
            self.pool.allocate(seq.table, needed)
        return True

    def _finish(self, seq: Sequence, reason: str) -> None:
        seq.finish_reason = reason
        seq.finished_at = self._clock()
        if not (seq.hold_blocks and reason != "abort"):
            self.pool.release(seq.table)
        seq.tokens.put_nowait(None)
        seq.done.set()
        self.observer.on_finished(seq)

    def release_held(self, seq: Sequence) -> None:
        """A remote decoder pulled (or gave up on) the blocks a P/D prefill kept."""
        self.pool.release(seq.table)
