"""Benchmark workloads as data: what each request asks for, and when it is sent.

A workload is a frozen dataclass whose fields are its whole definition (sizes in tokens); ``requests``
turns it into an ordered list of :class:`RequestSpec` for one seed, and :func:`poisson_offsets` gives
the open-loop send times for one arrival rate. Prompt text is made of random words so that every
group's prefix is unique and a prefix cache can only help where the workload says it should.

Token counts assume four characters per token, the convention the simulator and the EPP's estimating
token producer share (``simulator.tokens``), so "a 1,500-token system prompt" means 6,000 characters.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

CHARS_PER_TOKEN = 4

# A small fixed vocabulary keeps generated prompts readable and their length easy to control.
_WORDS = (
    "system",
    "assistant",
    "answer",
    "question",
    "policy",
    "context",
    "detail",
    "careful",
    "helpful",
    "document",
    "section",
    "table",
    "cluster",
    "request",
    "latency",
    "prefix",
    "cache",
    "decode",
    "prefill",
    "token",
    "model",
    "router",
    "gateway",
    "endpoint",
    "pool",
    "metric",
    "queue",
    "batch",
    "stream",
    "header",
    "budget",
    "region",
    "storage",
    "network",
    "compute",
    "memory",
    "schedule",
    "plan",
    "review",
    "summary",
    "example",
    "reason",
    "result",
    "value",
    "input",
    "output",
    "format",
    "number",
    "letter",
    "river",
    "mountain",
    "forest",
    "ocean",
    "desert",
    "city",
    "village",
    "market",
    "bridge",
    "garden",
    "window",
    "silver",
    "golden",
    "quiet",
    "bright",
)


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """One request of a workload: where it goes, its JSON body, and what it shares with others."""

    path: str
    body: Mapping[str, Any]
    # The prefix-sharing unit: a shared-prefix group, a chat conversation, or the request itself.
    group: str
    prompt_tokens: int
    output_tokens: int
    # Extra request headers (a tenant's fairness id, an InferenceObjective name).
    headers: Mapping[str, str] = field(default_factory=dict)


class Workload(Protocol):
    @property
    def name(self) -> str: ...

    def describe(self) -> str: ...

    def requests(self, model: str, seed: int) -> list[RequestSpec]: ...


def random_text(rng: random.Random, tokens: int) -> str:
    """Exactly ``tokens * CHARS_PER_TOKEN`` characters of random words."""
    if tokens < 0:
        raise ValueError(f"token count must be >= 0, got {tokens}")
    want = tokens * CHARS_PER_TOKEN
    words: list[str] = []
    length = 0
    while length < want:
        word = rng.choice(_WORDS)
        words.append(word)
        length += len(word) + 1
    return " ".join(words)[:want]


def _completion_body(model: str, prompt: str, output_tokens: int) -> dict[str, Any]:
    return {
        "model": model,
        "prompt": prompt,
        "max_tokens": output_tokens,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def _require_positive(owner: object, *names: str) -> None:
    bad = [f"{name}={getattr(owner, name)}" for name in names if getattr(owner, name) < 1]
    if bad:
        raise ValueError(f"{type(owner).__name__}: these sizes must be >= 1: {', '.join(bad)}")


@dataclass(frozen=True, slots=True)
class SharedPrefixWorkload:
    """GIE's shared-prefix shape: groups of prompts that share one long system prompt.

    Every prompt is ``system prompt of its group + a unique short question``; prompts arrive in random
    order across groups, as in inference-perf's ``shared_prefix`` data type. A router that keeps each
    group on one pod pays the long prefill once per group instead of once per group per pod.
    """

    groups: int = 16
    prompts_per_group: int = 8
    system_prompt_tokens: int = 1500
    question_tokens: int = 60
    output_tokens: int = 24
    name: str = field(default="shared-prefix", init=False)

    def __post_init__(self) -> None:
        _require_positive(
            self, "groups", "prompts_per_group", "system_prompt_tokens", "question_tokens", "output_tokens"
        )

    def describe(self) -> str:
        return (
            f"{self.groups} groups x {self.prompts_per_group} prompts, {self.system_prompt_tokens}-token "
            f"system prompt + {self.question_tokens}-token question, {self.output_tokens} output tokens "
            "(/v1/completions, streaming)"
        )

    def requests(self, model: str, seed: int) -> list[RequestSpec]:
        rng = random.Random(seed)
        specs: list[RequestSpec] = []
        for group in range(self.groups):
            system_prompt = random_text(rng, self.system_prompt_tokens)
            for _ in range(self.prompts_per_group):
                # The newline keeps the question out of the system prompt's last token.
                prompt = system_prompt + "\n" + random_text(rng, self.question_tokens - 1)
                specs.append(
                    RequestSpec(
                        path="/v1/completions",
                        body=_completion_body(model, prompt, self.output_tokens),
                        group=f"g{group}",
                        prompt_tokens=self.system_prompt_tokens + self.question_tokens,
                        output_tokens=self.output_tokens,
                    )
                )
        rng.shuffle(specs)
        return specs


@dataclass(frozen=True, slots=True)
class MultiTurnChatWorkload:
    """Chat conversations whose every turn resends the whole history (/v1/chat/completions).

    Open loop cannot wait for the model's real reply, so each earlier assistant turn is a fixed
    synthetic text of ``assistant_turn_tokens``; what matters to a prefix cache is that turn k+1
    starts with exactly the bytes of turn k. Turns of different conversations interleave at random,
    but a conversation's turns are always sent in order.
    """

    conversations: int = 12
    turns: int = 5
    system_prompt_tokens: int = 400
    user_turn_tokens: int = 120
    assistant_turn_tokens: int = 80
    output_tokens: int = 24
    name: str = field(default="multi-turn-chat", init=False)

    def __post_init__(self) -> None:
        _require_positive(
            self,
            "conversations",
            "turns",
            "system_prompt_tokens",
            "user_turn_tokens",
            "assistant_turn_tokens",
            "output_tokens",
        )

    def describe(self) -> str:
        return (
            f"{self.conversations} conversations x {self.turns} turns, {self.system_prompt_tokens}-token "
            f"system prompt, {self.user_turn_tokens}-token user turns, "
            f"{self.assistant_turn_tokens}-token earlier replies, {self.output_tokens} output tokens "
            "(/v1/chat/completions, streaming)"
        )

    def requests(self, model: str, seed: int) -> list[RequestSpec]:
        rng = random.Random(seed)
        per_conversation: list[list[RequestSpec]] = []
        for conversation in range(self.conversations):
            messages: list[dict[str, str]] = [
                {"role": "system", "content": random_text(rng, self.system_prompt_tokens)}
            ]
            tokens = self.system_prompt_tokens
            turns: list[RequestSpec] = []
            for turn in range(self.turns):
                if turn > 0:
                    reply = random_text(rng, self.assistant_turn_tokens)
                    messages.append({"role": "assistant", "content": reply})
                    tokens += self.assistant_turn_tokens
                messages.append({"role": "user", "content": random_text(rng, self.user_turn_tokens)})
                tokens += self.user_turn_tokens
                turns.append(
                    RequestSpec(
                        path="/v1/chat/completions",
                        body={
                            "model": model,
                            "messages": [dict(m) for m in messages],
                            "max_tokens": self.output_tokens,
                            "ignore_eos": True,
                            "stream": True,
                            "stream_options": {"include_usage": True},
                        },
                        group=f"c{conversation}",
                        prompt_tokens=tokens,
                        output_tokens=self.output_tokens,
                    )
                )
            per_conversation.append(turns)
        # Shuffle a multiset of conversation ids; the k-th draw of conversation c is its turn k.
        draws = [c for c in range(self.conversations) for _ in range(self.turns)]
        rng.shuffle(draws)
        next_turn = [0] * self.conversations
        ordered: list[RequestSpec] = []
        for conversation in draws:
            ordered.append(per_conversation[conversation][next_turn[conversation]])
            next_turn[conversation] += 1
        return ordered


@dataclass(frozen=True, slots=True)
class AgenticWorkload:
    """Agent sessions: every session starts with the same long system prompt and tool definitions,
    then grows its own history turn by turn (tool results and short replies) and resends it.

    The shared head makes every pod that has served any session look like a cache hit for every new
    session, which is what lets a prefix-affinity scorer pack sessions onto a few pods; the growing
    per-session tail is what makes keeping a session on its pod worth something.
    """

    sessions: int = 16
    turns: int = 6
    shared_prompt_tokens: int = 2000
    turn_tokens: int = 150
    assistant_turn_tokens: int = 40
    output_tokens: int = 24
    name: str = field(default="agentic", init=False)

    def __post_init__(self) -> None:
        _require_positive(
            self,
            "sessions",
            "turns",
            "shared_prompt_tokens",
            "turn_tokens",
            "assistant_turn_tokens",
            "output_tokens",
        )

    def describe(self) -> str:
        return (
            f"{self.sessions} sessions x {self.turns} turns sharing a {self.shared_prompt_tokens}-token "
            f"system prompt, {self.turn_tokens}-token tool results, {self.assistant_turn_tokens}-token "
            f"earlier replies, {self.output_tokens} output tokens (/v1/chat/completions, streaming)"
        )

    def requests(self, model: str, seed: int) -> list[RequestSpec]:
        rng = random.Random(seed)
        shared = random_text(rng, self.shared_prompt_tokens)
        per_session: list[list[RequestSpec]] = []
        for session in range(self.sessions):
            messages: list[dict[str, str]] = [{"role": "system", "content": shared}]
            tokens = self.shared_prompt_tokens
            turns: list[RequestSpec] = []
            for turn in range(self.turns):
                if turn > 0:
                    messages.append(
                        {"role": "assistant", "content": random_text(rng, self.assistant_turn_tokens)}
                    )
                    tokens += self.assistant_turn_tokens
                messages.append({"role": "user", "content": random_text(rng, self.turn_tokens)})
                tokens += self.turn_tokens
                turns.append(
                    RequestSpec(
                        path="/v1/chat/completions",
                        body={
                            "model": model,
                            "messages": [dict(m) for m in messages],
                            "max_tokens": self.output_tokens,
                            "ignore_eos": True,
                            "stream": True,
                            "stream_options": {"include_usage": True},
                        },
                        group=f"s{session}",
                        prompt_tokens=tokens,
                        output_tokens=self.output_tokens,
                    )
                )
            per_session.append(turns)
        draws = [s for s in range(self.sessions) for _ in range(self.turns)]
        rng.shuffle(draws)
        next_turn = [0] * self.sessions
        ordered: list[RequestSpec] = []
        for session in draws:
            ordered.append(per_session[session][next_turn[session]])
            next_turn[session] += 1
        return ordered


@dataclass(frozen=True, slots=True)
class RandomWorkload:
    """Independent prompts with nothing in common: a prefix cache cannot help, only balance can."""

    count: int = 96
    prompt_tokens: int = 800
    output_tokens: int = 24
    name: str = field(default="random", init=False)

    def __post_init__(self) -> None:
        _require_positive(self, "count", "prompt_tokens", "output_tokens")

    def describe(self) -> str:
        return (
            f"{self.count} unrelated prompts of {self.prompt_tokens} tokens, {self.output_tokens} output "
            "tokens (/v1/completions, streaming)"
        )

    def requests(self, model: str, seed: int) -> list[RequestSpec]:
        rng = random.Random(seed)
        prompts = [random_text(rng, self.prompt_tokens) for _ in range(self.count)]
        return [
            RequestSpec(
                path="/v1/completions",
                body=_completion_body(model, prompt, self.output_tokens),
                group=f"r{index}",
                prompt_tokens=self.prompt_tokens,
                output_tokens=self.output_tokens,
            )
            for index, prompt in enumerate(prompts)
        ]


def poisson_offsets(count: int, rate: float, seed: int) -> list[float]:
    """Send times (seconds from the start) of ``count`` requests arriving as a Poisson process."""
    if rate <= 0:
        raise ValueError(f"arrival rate must be > 0 requests/s, got {rate}")
    rng = random.Random(seed)
    offsets: list[float] = []
    now = 0.0
    for _ in range(count):
        offsets.append(now)
        now += rng.expovariate(rate)
    return offsets


def workload_fields(workload: Workload) -> dict[str, Any]:
    """The workload's defining sizes, for the JSON results."""
    data: dict[str, Any] = asdict(workload)  # type: ignore[call-overload]
    return data


@dataclass(frozen=True, slots=True)
class MultiTenantWorkload:
    """The multi-tenant shape of llm-d's precise-scheduling blog (2025-09-24: 150 tenants, each with
    a 6,000-token shared context, ~1,200-token queries, 8 pods), scaled by ``tenants`` and
    ``requests_per_tenant``: every request is its tenant's context + a unique query, in random
    order. With the pool's KV cache smaller than all contexts together, pods must evict, and only
    a router that knows what each pod still holds keeps hitting."""

    tenants: int = 48
    requests_per_tenant: int = 6
    context_tokens: int = 6000
    query_tokens: int = 1200
    output_tokens: int = 16
    name: str = field(default="multi-tenant", init=False)

    def __post_init__(self) -> None:
        _require_positive(
            self, "tenants", "requests_per_tenant", "context_tokens", "query_tokens", "output_tokens"
        )

    def describe(self) -> str:
        return (
            f"{self.tenants} tenants x {self.requests_per_tenant} requests, {self.context_tokens}-token "
            f"tenant context + {self.query_tokens}-token query, {self.output_tokens} output tokens "
            "(/v1/completions, streaming)"
        )

    def requests(self, model: str, seed: int) -> list[RequestSpec]:
        shape = SharedPrefixWorkload(
            groups=self.tenants,
            prompts_per_group=self.requests_per_tenant,
            system_prompt_tokens=self.context_tokens,
            question_tokens=self.query_tokens,
            output_tokens=self.output_tokens,
        )
        return [replace(spec, group=f"t{spec.group[1:]}") for spec in shape.requests(model, seed)]


@dataclass(frozen=True, slots=True)
class CacheChurnWorkload:
    """A working set larger than the pool's KV cache: ``groups`` long shared prefixes asked
    ``groups x prompts_per_group`` times in random order, whose prefixes together exceed what the
    pods can hold (the benchmark sizes the pods' KV for that). With ``zipf`` > 0 the prefixes'
    popularity follows Zipf's law with that exponent (a few hot prefixes, a long tail), as real
    traffic does; 0 asks every prefix equally often. Pods evict all the time; a router's picture of
    who holds what goes stale unless it hears the evictions."""

    groups: int = 96
    prompts_per_group: int = 4
    prefix_tokens: int = 3000
    question_tokens: int = 100
    output_tokens: int = 16
    zipf: float = 0.0
    name: str = field(default="cache-churn", init=False)

    def __post_init__(self) -> None:
        _require_positive(
            self, "groups", "prompts_per_group", "prefix_tokens", "question_tokens", "output_tokens"
        )
        if self.zipf < 0:
            raise ValueError(f"CacheChurnWorkload: zipf must be >= 0, got {self.zipf}")

    @property
    def working_set_tokens(self) -> int:
        return self.groups * (self.prefix_tokens + self.question_tokens)

    def describe(self) -> str:
        popularity = f"Zipf({self.zipf:g}) popularity" if self.zipf else "equally popular"
        return (
            f"{self.groups} prefixes ({popularity}), {self.groups * self.prompts_per_group} requests, "
            f"{self.prefix_tokens}-token prefix + {self.question_tokens}-token question "
            f"({self.working_set_tokens:,} tokens of prefixes), {self.output_tokens} output tokens "
            "(/v1/completions, streaming)"
        )

    def requests(self, model: str, seed: int) -> list[RequestSpec]:
        rng = random.Random(seed)
        prefixes = [random_text(rng, self.prefix_tokens) for _ in range(self.groups)]
        count = self.groups * self.prompts_per_group
        if self.zipf:
            weights = [1 / (rank + 1) ** self.zipf for rank in range(self.groups)]
            picks = rng.choices(range(self.groups), weights=weights, k=count)
        else:
            picks = [g for g in range(self.groups) for _ in range(self.prompts_per_group)]
            rng.shuffle(picks)
        specs = []
        for group in picks:
            # The newline keeps the question out of the prefix's last token.
            prompt = prefixes[group] + "\n" + random_text(rng, self.question_tokens - 1)
            specs.append(
                RequestSpec(
                    path="/v1/completions",
                    body=_completion_body(model, prompt, self.output_tokens),
                    group=f"p{group}",
                    prompt_tokens=self.prefix_tokens + self.question_tokens,
                    output_tokens=self.output_tokens,
                )
            )
        return specs
