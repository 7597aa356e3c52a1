"""The embedded model's streaming speed through chatplane against llama.cpp called directly.

    .venv/bin/python bench/embedded.py [--runs N] [--threads N] [--extra-bufts auto|on|off]

Starts ``chatplane serve`` on the defaults (SQLite, the embedded SmolLM2-135M,
nothing configured) as a process, and a second process of its own that loads
the same GGUF file into a ``llama_cpp.Llama`` with the settings chatplane uses
(``providers/embedded.py``: ``n_ctx``, ``n_threads``, ``max_tokens``,
``repeat_penalty``, the LLM's temperature) and calls it in its main thread
(``direct_worker``: one JSON request a line on stdin). Each run sends one user
message:

- **chatplane**: a fresh chat, ``POST /api/chats/{id}/completions`` with
  ``Accept: text/event-stream``, timed from the request to the first ``delta``
  event (TTFT) and to the ``done`` event;
- **direct**: ``create_chat_completion(stream=True)`` on the messages chatplane
  sends the model for that chat (its rendered ``general_prompt`` as the system
  message, then the user's message), timed from the call to the first chunk
  with text and to the end of the stream.

Both sides are counted the same way: the reply's text through the model's own
tokenizer. The replies must come out identical (temperature 0, same prompt):
that is checked, as evidence that both sides ran the same prompt. Runs
alternate sides (and which goes first) so that drift on a shared machine hits
both. Prints p50 figures and chatplane/direct ratios; asserts nothing.

Besides wall-clock figures it prints the CPU each side spent per token
(chatplane: the whole server process, HTTP and database included). With one
thread it moves much less with the machine's other load than the wall-clock
figures. With two threads on two cores that something else keeps busy,
llama.cpp's spin barriers burn CPU while a thread waits for a core: a side
whose CPU per token is many times the other's was slowed by that, not by its
own work, and its tok/s says more about the machine than about chatplane.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

KEY = "bench-key-0123456789abcdef"
SYSTEM_TEMPLATE = "You are {{name}}, a friendly assistant in a small bookshop. Answer helpfully."
VARIABLES = {"name": "Ava"}
SYSTEM = "You are Ava, a friendly assistant in a small bookshop. Answer helpfully."  # as chatplane renders it
PROMPTS = [
    "Tell me a short story about a lighthouse keeper who loves books.",
    "Describe three good books for a long train journey, and why.",
    "Write a friendly letter inviting customers to our autumn reading evening.",
    "Explain how to look after old paperback books so they last.",
    "Tell me about the history of libraries in a few paragraphs.",
    "Write a short story about a cat that lives in a bookshop.",
    "What should I read if I liked adventure novels as a child?",
    "Describe a perfect rainy afternoon in a bookshop.",
]

# llama.cpp's AMX "extra buffer" (weights repacked for AMX tiles) crashes with
# SIGSEGV in ggml_backend_amx_mul_mat on the first batch of two or more tokens
# on this VM's Xeon (amx_int8) when llama-cpp-python is built natively; the
# Makefile builds it portable (AVX2) for that reason. For an install that is
# native all the same, the switch (which llama-cpp-python does not expose) is
# turned off on both sides alike, by patching the default model parameters
# before anything loads a model.
SERVE = """
import sys
sys.path.insert(0, {bench!r})
from embedded import disable_extra_bufts
{call}
from chatplane.cli import main
sys.exit(main(sys.argv[1:]))
"""
WORKER = """
import sys
sys.path.insert(0, {bench!r})
from embedded import direct_worker
direct_worker()
"""
PROBE = """
import llama_cpp
from chatplane.providers.embedded import default_model_path
llm = llama_cpp.Llama(model_path=str(default_model_path()), n_ctx=256, n_threads=1, verbose=False)
llm.eval(llm.tokenize(b"hello world, how are you?"))
"""


def disable_extra_bufts() -> None:
    import llama_cpp.llama_cpp as c

    default_params = c.llama_model_default_params

    def params():  # type: ignore[no-untyped-def]
        p = default_params()
        p.use_extra_bufts = False
        return p

    c.llama_model_default_params = params


def extra_bufts_crash() -> bool:
    """Whether loading the model with llama.cpp's defaults dies on a batch."""
    return subprocess.run([sys.executable, "-c", PROBE], capture_output=True, check=False).returncode < 0


@dataclass
class Run:
    ttft: float  # seconds to the first token with text
    total: float  # seconds to the end of the answer
    decode: float  # seconds from the first token to the last
    tokens: int  # the reply through the model's tokenizer
    text: str
    cpu: float  # CPU seconds the side spent on it (chatplane: the server process, all its threads)

    @property
    def tokens_per_s(self) -> float:
        """End to end: tokens over the whole answer, prompt processing included."""
        return self.tokens / self.total

    @property
    def cpu_ms_per_token(self) -> float:
        """Much less moved by other load on the machine than the wall-clock figures."""
        return self.cpu / self.tokens * 1000

    @property
    def decode_per_s(self) -> float:
        """Generation only: the tokens after the first over the time they took."""
        return (self.tokens - 1) / self.decode if self.decode > 0 else float("nan")


def wait_up(url: str, server: subprocess.Popen) -> None:
    for _ in range(1200):
        if server.poll() is not None:
            raise RuntimeError(f"chatplane serve exited with {server.returncode}")
        try:
            httpx.get(url)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def through_chatplane(client: httpx.Client, server: int, agent_id: str, prompt: str, count) -> Run:  # type: ignore[no-untyped-def]
    chat = client.post("/api/chats", json={"workspaceId": 1, "agent_id": agent_id})
    chat.raise_for_status()
    chat_id = chat.json()["chatId"]
    parts: list[str] = []
    first = last = None
    done = None
    kind = None
    cpu = cpu_seconds(server)
    started = time.perf_counter()
    with client.stream("POST", f"/api/chats/{chat_id}/completions",
                       json={"workspaceId": 1, "content": prompt},
                       headers={"Accept": "text/event-stream"}) as response:
        if response.status_code != 201:
            raise RuntimeError(f"completion answered {response.status_code}: {response.read()!r}")
        for line in response.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                now = time.perf_counter()
                data = json.loads(line[6:])
                if kind == "delta":
                    first = first or now
                    last = now
                    parts.append(data["content"])
                elif kind == "done":
                    done = data
                else:
                    raise RuntimeError(f"stream ended with {kind}: {data}")
    ended = time.perf_counter()
    cpu = cpu_seconds(server) - cpu
    if done is None or first is None:
        raise RuntimeError("the stream gave no text or no done event")
    text = done["messages"][0]["content"]
    assert text == "".join(parts), "the done event does not hold the streamed text"
    return Run(first - started, ended - started, last - first, count(text), text, cpu)


def direct(llm, prompt: str, options: dict) -> Run:  # type: ignore[no-untyped-def]
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]
    parts: list[str] = []
    first = last = None
    cpu = time.process_time()
    started = time.perf_counter()
    for chunk in llm.create_chat_completion(messages=messages, stream=True, **options):
        text = chunk["choices"][0].get("delta", {}).get("content")
        if text:
            now = time.perf_counter()
            first = first or now
            last = now
            parts.append(text)
    ended = time.perf_counter()
    cpu = time.process_time() - cpu
    if first is None:
        raise RuntimeError("llama.cpp gave no text")
    text = "".join(parts)
    return Run(first - started, ended - started, last - first, count_tokens(llm, text), text, cpu)


def count_tokens(llm, text: str) -> int:  # type: ignore[no-untyped-def]
    return len(llm.tokenize(text.encode(), add_bos=False, special=True))


def direct_worker() -> None:
    """The direct side, a process of its own as the server is: a settings line on
    stdin, then one request a line (``{"prompt"}`` or ``{"count"}``), one JSON answer each."""
    setup = json.loads(sys.stdin.readline())
    if setup["extra_bufts_off"]:
        disable_extra_bufts()
    from llama_cpp import Llama

    llm = Llama(model_path=setup["model_path"], n_ctx=setup["n_ctx"], n_threads=setup["n_threads"],
                n_threads_batch=setup["n_threads"], verbose=False)
    print("{}", flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if "count" in request:
            answer = {"tokens": count_tokens(llm, request["count"])}
        else:
            answer = asdict(direct(llm, request["prompt"], setup["options"]))
        print(json.dumps(answer), flush=True)


class DirectProcess:
    def __init__(self, setup: dict, bench: Path) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", WORKER.format(bench=str(bench))],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.ask(setup)

    def ask(self, request: dict) -> dict:
        assert self.process.stdin and self.process.stdout
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the direct process exited with {self.process.wait()}")
        return json.loads(line)

    def run(self, prompt: str) -> Run:
        return Run(**self.ask({"prompt": prompt}))

    def count(self, text: str) -> int:
        return self.ask({"count": text})["tokens"]

    def close(self) -> None:
        if self.process.stdin:
            self.process.stdin.close()
        self.process.wait(30)


def p50(runs: list[Run], attr: str) -> float:
    return statistics.median(getattr(r, attr) for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=8, help="measured runs per side (after one warm-up each)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CHATPLANE_EMBEDDED__THREADS on both sides (unset: the server's default, all cores but one)")
    parser.add_argument("--max-tokens", type=int, default=None, help="CHATPLANE_EMBEDDED__MAX_TOKENS (unset: 256)")
    parser.add_argument("--extra-bufts", choices=["auto", "on", "off"], default="auto",
                        help="llama.cpp's extra weight buffers (AMX repack); auto: off if they crash here")
    args = parser.parse_args()
    load_before = f"{os.getloadavg()[0]:.2f}"

    if args.extra_bufts == "auto":
        args.extra_bufts = "off" if extra_bufts_crash() else "on"
        if args.extra_bufts == "off":
            print("note: llama.cpp's default (AMX extra buffers) crashes on this host; both sides run without them")

    from chatplane.providers.base import ModelRequest
    from chatplane.providers.embedded import default_model_path, threads_for
    from chatplane.settings import EmbeddedModelSettings

    tmp = Path(tempfile.mkdtemp(prefix="chatplane-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATPLANE_")}
    env.update(CHATPLANE_DATA_DIR=str(tmp), CHATPLANE_BOOTSTRAP_API_KEY=KEY)
    overrides = {}
    if args.threads:
        env["CHATPLANE_EMBEDDED__THREADS"] = str(args.threads)
        overrides["threads"] = args.threads
    if args.max_tokens:
        env["CHATPLANE_EMBEDDED__MAX_TOKENS"] = str(args.max_tokens)
        overrides["max_tokens"] = args.max_tokens
    embedded = EmbeddedModelSettings(**overrides)  # what the server reads from the same variables

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    bench = Path(__file__).resolve().parent
    server = subprocess.Popen(
        [sys.executable, "-c", SERVE.format(bench=str(bench),
                                            call="disable_extra_bufts()" if args.extra_bufts == "off" else ""),
         "serve", "--port", str(port), "--log-level", "warning"],
        env=env, stdout=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    llm = None
    try:
        wait_up(base + "/healthz", server)
        llm = DirectProcess({
            "extra_bufts_off": args.extra_bufts == "off",
            "model_path": str(embedded.model_path or default_model_path()),
            "n_ctx": embedded.n_ctx,
            "n_threads": threads_for(embedded),  # the server's, for generation and prompts alike
            # The kwargs EmbeddedModel._run passes besides the messages.
            "options": {
                "max_tokens": embedded.max_tokens,
                "repeat_penalty": embedded.repeat_penalty,
                **ModelRequest(messages=[], temperature=0.0).options(json_schema_format=None),
            },
        }, bench)
        count = llm.count
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {KEY}"}, timeout=300) as client:
            created = client.post("/api/llms", json={
                "workspaceId": 1, "display_name": "bench", "general_prompt": SYSTEM_TEMPLATE,
                "default_dynamic_variables": VARIABLES,
            })
            created.raise_for_status()
            assert created.json()["model"] == embedded.name, created.json()
            agent = client.post("/api/chat-agents", json={
                "workspaceId": 1, "agent_name": "bench",
                "response_engine": {"type": "uponai-llm", "llm_id": created.json()["llm_id"]},
            }).json()

            # Warm-up: the server loads the model on its first turn.
            through_chatplane(client, server.pid, agent["agent_id"], "Hello!", count)
            llm.run("Hello!")

            ours: list[Run] = []
            theirs: list[Run] = []
            for i in range(args.runs):
                prompt = PROMPTS[i % len(PROMPTS)]
                for side in ("chatplane", "direct") if i % 2 == 0 else ("direct", "chatplane"):
                    if side == "chatplane":
                        ours.append(through_chatplane(client, server.pid, agent["agent_id"], prompt, count))
                    else:
                        theirs.append(llm.run(prompt))
                    time.sleep(0.3)  # let the other side's threads go idle
                a, b = ours[-1], theirs[-1]
                print(f"  run {i + 1}: chatplane {a.tokens:3d} tok, TTFT {a.ttft * 1000:6.1f} ms, "
                      f"{a.tokens_per_s:5.1f} tok/s, {a.cpu_ms_per_token:5.1f} ms CPU/tok | direct {b.tokens:3d} tok, "
                      f"TTFT {b.ttft * 1000:6.1f} ms, {b.tokens_per_s:5.1f} tok/s, {b.cpu_ms_per_token:5.1f} ms CPU/tok"
                      f"{'' if ours[-1].text == theirs[-1].text else '  (texts differ)'}", flush=True)
    finally:
        if llm is not None:
            llm.close()
        server.terminate()
        server.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)

    same = sum(a.text == b.text for a, b in zip(ours, theirs))
    print(f"\nembedded model {embedded.name}, threads={threads_for(embedded)}, "
          f"max_tokens={embedded.max_tokens}, extra buffers {args.extra_bufts}, {args.runs} runs per side; "
          f"identical replies {same}/{args.runs}")
    print(f"load average before/after: {load_before} / {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print(f"{'':12}{'TTFT p50':>12}{'tok/s p50':>12}{'decode tok/s p50':>18}{'CPU/token p50':>16}{'tokens p50':>12}")
    for name, runs in (("chatplane", ours), ("direct", theirs)):
        print(f"{name:12}{p50(runs, 'ttft') * 1000:9.1f} ms{p50(runs, 'tokens_per_s'):12.1f}"
              f"{p50(runs, 'decode_per_s'):18.1f}{p50(runs, 'cpu_ms_per_token'):13.1f} ms{p50(runs, 'tokens'):12.0f}")
    print(f"chatplane/direct: tok/s {p50(ours, 'tokens_per_s') / p50(theirs, 'tokens_per_s'):.3f}x, "
          f"decode tok/s {p50(ours, 'decode_per_s') / p50(theirs, 'decode_per_s'):.3f}x, "
          f"TTFT {(p50(ours, 'ttft') - p50(theirs, 'ttft')) * 1000:+.1f} ms, "
          f"CPU/token {p50(ours, 'cpu_ms_per_token') / p50(theirs, 'cpu_ms_per_token'):.3f}x"
          f"   (target: tok/s >= 0.9x)")


if __name__ == "__main__":
    main()
