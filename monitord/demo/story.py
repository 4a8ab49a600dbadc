"""The demo's cast, its script and its config. Pure data and text: nothing here starts or waits."""

from __future__ import annotations

from dataclasses import dataclass

from monitord.demo.servers import ModelCard, Phase

STORY_S = 120.0  # at speed 1


@dataclass(frozen=True, slots=True)
class Actor:
    name: str
    kind: str  # a simulated server kind, which is also the provider type
    model: ModelCard
    role: str


@dataclass(frozen=True, slots=True)
class Step:
    at_s: float  # at speed 1
    actor: str
    phase: Phase
    says: str


QWEN = ModelCard("qwen2.5-7b-instruct-q4_k_m.gguf", "qwen2", "7.6B", 7_615_616_512, "Q4_K - Medium",
                 4_683_073_888, 32768)
LLAMA = ModelCard("llama3.2:3b", "llama", "3.2B", 3_212_749_888, "Q4_K_M", 2_019_393_189, 131072)
MISTRAL = ModelCard("mistralai/Mistral-7B-Instruct-v0.3", "mistral", "7.2B", 7_248_023_552, "bf16",
                    14_496_047_104, 32768)
PHI = ModelCard("phi-4-mini-q8_0.gguf", "phi3", "3.8B", 3_836_021_760, "Q8_0", 4_079_964_160, 16384)
KOBOLD = ModelCard("Meta-Llama-3.1-8B-Instruct-Q4_K_M", "llama", "8.0B", 8_030_261_248, "Q4_K_M",
                   4_920_733_696, 8192)

CAST = (
    Actor("gpu", "llamacpp", QWEN, "loads its model, then serves"),
    Actor("laptop", "ollama", LLAMA, "slows down for a while"),
    Actor("box", "vllm", MISTRAL, "stalls: health answers, generation hangs"),
    Actor("busy", "llamacpp", PHI, "saturates: every slot busy"),
    Actor("story", "koboldcpp", KOBOLD, "dies and comes back"),
)

SCRIPT = (
    Step(0, "gpu", Phase.LOADING, "gpu (llama.cpp) starts loading its model: /health answers 503 Loading model"),
    Step(15, "gpu", Phase.READY, "gpu has loaded its model and serves"),
    Step(25, "laptop", Phase.SLOW, "laptop (Ollama) slows down: every answer waits, tokens come 4x slower"),
    Step(35, "box", Phase.STALLED, "box (vLLM) stalls: /health and /v1/models answer, generation never starts"),
    Step(45, "busy", Phase.SATURATED, "busy (llama.cpp) saturates: every slot busy, requests queue"),
    Step(55, "story", Phase.DEAD, "story (KoboldCpp) dies: connection refused"),
    Step(75, "laptop", Phase.READY, "laptop is fast again"),
    Step(85, "busy", Phase.READY, "busy has free slots again"),
    Step(90, "story", Phase.READY, "story (KoboldCpp) is back on its port"),
    Step(100, "box", Phase.READY, "box generates again"),
)


def demo_config(urls: dict[str, str], db_path: str, listen: str, webhook_url: str, speed: float) -> str:
    """The YAML the daemon runs on: every actor as a provider, probes and canaries paced to the story's speed."""
    interval = max(0.2, 2.0 / speed)
    canary_interval = max(1.0, 6.0 / speed)
    lines = ["providers:"]
    for actor in CAST:
        lines += [f"  {actor.name}:", f"    type: {actor.kind}", f'    endpoint: "{urls[actor.name]}"',
                  "    parameters:", f"      probe_interval: {interval:g}s", "      timeout: 5s",
                  "      max_retries: 0", "      canary: true"]
    lines += [
        "monitor:",
        "  jitter: 0s",
        f"  stall_window: {max(3.0, 30.0 / speed):g}s",
        "  canary:",
        f"    interval: {canary_interval:g}s",
        "    deadline: 4s",
        "    timeout: 8s",
        "    max_tokens: 8",
        "storage:",
        f'  url: "sqlite+aiosqlite:///{db_path}"',
        "  flush_interval: 200ms",
        "api:",
        f'  listen: "{listen}"',
        "alerts:",
        "  failure_threshold: 2",
        "  success_threshold: 2",
        "  alert_never_up: true",  # gpu is loading from its first probe: the story wants that alert
        "  webhooks:",
        f'    - {{name: demo-printer, url: "{webhook_url}"}}',
    ]
    return "\n".join(lines) + "\n"
