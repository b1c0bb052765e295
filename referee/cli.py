"""The `referee` command line.

    referee serve verifiers [--port 0] [--workers N] [--load pkg.mod:name ...]
    referee serve gateway --config FILE [--port 50050]
    referee serve judge --endpoint URL --model NAME [--port 50053]
    referee serve reward-model --model DIR [--port 50061] [--max-batch-size 32]
    referee score --target HOST:PORT --reward NAME [--input FILE|-] [--params JSON]
    referee list --target HOST:PORT
    referee health --target HOST:PORT
    referee serve sandbox [--backend bwrap|docker] [--slots N]
    referee serve rollout --model DIR|tiny:tiny [--port 30000]
    referee up [--config up.yaml] [--exit-on-failure] [--quiet]
    referee exec --target HOST:PORT --language python FILE [--stdin FILE]
    referee train CONFIG.yaml [--set key=value ...] [--resume]
    referee eval CONFIG.yaml [--set key=value ...] [--model DIR]

A token can come from `--token` or the REFEREE_TOKEN environment variable (which keeps
it out of the process list).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any, TextIO

TOKEN_ENV = "REFEREE_TOKEN"


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        raise SystemExit(2)
    try:
        code = args.run(args)
    except KeyboardInterrupt:
        code = 130
    raise SystemExit(code or 0)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="referee",
        description="Reward and verifier services over gRPC, and the tools to use them.",
    )
    sub = p.add_subparsers(title="commands", metavar="COMMAND")

    serve = sub.add_parser("serve", help="run a referee service", description="Run a referee service.")
    serve_sub = serve.add_subparsers(title="services", metavar="SERVICE")
    v = serve_sub.add_parser(
        "verifiers",
        help="rule-based verifiers (math, exact, regex, choice, format, json, length) and custom ones",
        description="Serve rule-based verifiers over gRPC (referee.v1.RewardService). "
        "CPU-bound verification runs in worker processes with a hard per-sample time limit.",
    )
    _server_args(v)
    v.add_argument("--workers", type=int, default=os.cpu_count() or 2,
                   help="worker processes for verification (default: CPU count)")
    v.add_argument("--timeout", type=float, default=10.0,
                   help="per-sample time limit in seconds for verifiers that set none (default 10)")
    v.add_argument("--load", action="append", default=[], metavar="MODULE:NAME",
                   help="also serve a custom verifier (function, class or instance); repeatable")
    v.add_argument("--no-builtins", action="store_true", help="do not serve the built-in verifiers")
    v.add_argument("--no-entrypoints", action="store_true",
                   help="ignore verifiers published by installed packages (entry-point group referee.verifiers)")
    v.add_argument("--cache-size", type=int, default=100_000, help="LRU result cache entries; 0 disables")
    v.add_argument("--worker-memory-mb", type=int, default=None, help="address-space limit per worker")
    v.add_argument("--max-batch", type=int, default=16384, help="most samples per request")
    v.add_argument("--sandbox", default=None, metavar="HOST:PORT",
                   help="sandbox service for the `code` reward (or set REFEREE_SANDBOX); comma-separate replicas")
    v.set_defaults(run=_run_serve_verifiers)

    gw = serve_sub.add_parser(
        "gateway",
        help="one reward address that routes to and composes rewards of other services",
        description="Serve the rewards a YAML config names: routes to upstream reward services "
        "and composite rewards (weighted sums with gates) scored on several upstreams at once. "
        "Health turns NOT_SERVING while a required upstream is down. See examples/configs/gateway.yaml.",
    )
    gw.add_argument("--config", type=Path, required=True, help="gateway YAML config")
    _server_args(gw, default_port=50050)
    gw.set_defaults(run=_run_serve_gateway)

    jd = serve_sub.add_parser(
        "judge",
        help="LLM-as-judge over an OpenAI-compatible chat endpoint (the `judge` reward)",
        description="Serve the `judge` reward: pointwise rubric scores, pairwise comparison with "
        "the reference (both orders) or reference matching, asked of a model behind any "
        "OpenAI-compatible /v1/chat/completions endpoint. Unparseable or refused verdicts are ERROR.",
    )
    jd.add_argument("--endpoint", required=True, help="base URL of the judge API, e.g. http://127.0.0.1:30000/v1")
    jd.add_argument("--model", required=True, help="model name sent to the endpoint")
    jd.add_argument("--api-key-env", default="REFEREE_JUDGE_API_KEY", metavar="VAR",
                    help="environment variable holding the endpoint's API key (default REFEREE_JUDGE_API_KEY)")
    jd.add_argument("--judge-concurrency", type=int, default=16,
                    help="requests in flight to the endpoint at once (default 16; --max-concurrency "
                    "limits gRPC calls)")
    jd.add_argument("--timeout", type=float, default=60.0,
                    help="seconds per judge request; past it the sample is TIMEOUT (default 60)")
    jd.add_argument("--retries", type=int, default=3, help="retries on 429/5xx/connection errors (default 3)")
    jd.add_argument("--backoff", type=float, default=0.5, help="first retry's backoff in seconds (default 0.5)")
    jd.add_argument("--cache-size", type=int, default=10_000, help="judge replies and results cached; 0 disables")
    jd.add_argument("--max-batch", type=int, default=16384, help="most samples per request")
    _server_args(jd, default_port=50053)
    jd.set_defaults(run=_run_serve_judge)

    rm = serve_sub.add_parser(
        "reward-model",
        help="a transformers sequence-classification reward model (dynamic batching)",
        description="Serve a Hugging Face sequence-classification model with one output as a "
        "reward: each (prompt, completion) is rendered with the tokenizer's chat template (or as a "
        "text pair) and its logit is the score. Samples of concurrent requests are batched into "
        "one forward; scores do not depend on the batch or the padding side.",
    )
    rm.add_argument("--model", type=Path, required=True, help="model directory (config, weights, tokenizer)")
    rm.add_argument("--name", default="reward_model", help="reward name to serve (default reward_model)")
    rm.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1 ... (default cpu)")
    rm.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="weights dtype (default fp32)")
    rm.add_argument("--max-batch-size", type=int, default=32,
                    help="most samples in one forward; 1 runs one forward per sample (default 32)")
    rm.add_argument("--max-wait-ms", type=float, default=5.0,
                    help="how long the oldest queued sample waits for others to join its forward (default 5)")
    rm.add_argument("--max-batch-tokens", type=int, default=16384,
                    help="most padded tokens in one forward (default 16384)")
    rm.add_argument("--max-length", type=int, default=None,
                    help="most tokens per sample (default: the tokenizer's model_max_length, capped by the model)")
    rm.add_argument("--truncation", default="left", choices=["left", "right", "error"],
                    help="longer samples: drop their start, their end, or answer INVALID_INPUT (default left)")
    rm.add_argument("--normalize", default="none", choices=["none", "fixed", "running"],
                    help="none; fixed: (logit - offset) / scale; running: by the running mean/std of "
                    "all scores so far (order-dependent) (default none)")
    rm.add_argument("--norm-offset", type=float, default=0.0, help="offset for --normalize fixed")
    rm.add_argument("--norm-scale", type=float, default=1.0, help="scale for --normalize fixed")
    rm.add_argument("--timeout", type=float, default=60.0,
                    help="per-sample limit on queueing plus forward; past it TIMEOUT (default 60)")
    rm.add_argument("--max-batch", type=int, default=16384, help="most samples per request")
    rm.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    _server_args(rm, default_port=50061)
    rm.set_defaults(run=_run_serve_reward_model)

    sb = serve_sub.add_parser(
        "sandbox",
        help="run untrusted code in isolation (referee.v1.SandboxService)",
        description="Serve the SandboxService: each job runs in its own namespaces with no network, "
        "a read-only system, a size-capped work dir, seccomp, rlimits/cgroups and a wall-clock limit.",
    )
    _server_args(sb, default_port=50052)
    sb.add_argument("--backend", default="bwrap", choices=["bwrap", "docker", "local"],
                    help="isolation backend (default bwrap; local is UNSAFE, for debugging only)")
    sb.add_argument("--i-know-local-is-unsafe", dest="allow_unsafe", action="store_true",
                    help="required with --backend local, which runs code with NO isolation")
    sb.add_argument("--slots", type=int, default=os.cpu_count() or 2, help="jobs run at once (default: CPU count)")
    sb.add_argument("--max-queue", type=int, default=64, help="jobs waiting for a slot before RESOURCE_EXHAUSTED")
    sb.add_argument("--docker-image", default="referee-sandbox-runtime:latest", help="image for --backend docker")
    sb.add_argument("--docker-pool-size", type=int, default=None, help="warm containers (default: --slots)")
    _limit_args(sb, "default ")
    sb.set_defaults(run=_run_serve_sandbox)

    ro = serve_sub.add_parser(
        "rollout",
        help="a CPU stand-in for an SGLang server (HTTP: /generate, weight updates, OpenAI routes)",
        description="Serve a transformers model over the part of SGLang's native HTTP API the trainer "
        "uses, plus /v1/chat/completions and /v1/completions. For development and CI on CPU: queued "
        "requests with the same sampling settings run as one batch; it is not a serving engine.",
    )
    ro.add_argument("--model", required=True,
                    help="Hugging Face model directory, or tiny:tiny / tiny:small (built in code)")
    ro.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    ro.add_argument("--port", type=int, default=30000, help="port to bind; 0 picks a free one (default 30000)")
    ro.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="weights dtype (default fp32)")
    ro.add_argument("--max-total-tokens", type=int, default=None,
                    help="most tokens one request may need (prompt + max_new_tokens, times n, summed)")
    ro.add_argument("--max-batch-size", type=int, default=64,
                    help="most rows (prompts x n) merged into one generation batch (default 64)")
    ro.add_argument("--batch-wait-ms", type=float, default=2.0,
                    help="how long the oldest queued request waits for others to join its batch (default 2)")
    ro.add_argument("--weight-version", default="default", help="initial weight_version (default 'default')")
    ro.add_argument("--threads", type=int, default=None, help="torch threads (default 1 on CPU)")
    ro.add_argument("--log-level", default="WARNING", help="uvicorn log level (default WARNING)")
    ro.set_defaults(run=_run_serve_rollout)

    ex = sub.add_parser(
        "exec",
        help="run a program on a sandbox service and print the verdict and output",
        description="Send FILE to a sandbox service; the program's stdout/stderr are printed as they came "
        "back, then the verdict line on stderr. Exit status 0 when the verdict is OK, 1 otherwise.",
    )
    ex.add_argument("file", type=Path, help="source file to run")
    ex.add_argument("--target", required=True, help="HOST:PORT of `referee serve sandbox`")
    ex.add_argument("--language", required=True, help="python, c, cpp, javascript, bash")
    ex.add_argument("--stdin", type=Path, default=None, help="file to feed on stdin")
    ex.add_argument("--arg", action="append", default=[], help="argument to the program; repeatable")
    ex.add_argument("--token", default=None, help=f"bearer token (or set {TOKEN_ENV})")
    ex.add_argument("--tls-ca", type=Path, default=None, help="CA certificate (PEM) to trust; enables TLS")
    ex.add_argument("--timeout", type=float, default=120.0, help="deadline for the call in seconds (default 120)")
    _limit_args(ex, "")
    ex.set_defaults(run=_run_exec)

    score = sub.add_parser(
        "score",
        help="score JSONL samples against a running service",
        description="Read samples as JSONL (fields id, prompt, completion, reference, metadata) "
        "and write one JSON score per line (id, status, value, components, reason). "
        "value is null whenever status is not OK.",
    )
    _client_args(score)
    score.add_argument("--reward", required=True, help="the reward to apply (see `referee list`)")
    score.add_argument("--input", default="-", help="JSONL file of samples, or - for stdin (default)")
    score.add_argument("--output", default="-", help="where to write scores (default stdout)")
    score.add_argument("--params", default="{}", help="reward params as a JSON object")
    score.set_defaults(run=_run_score)

    lst = sub.add_parser("list", help="list the rewards a service offers",
                         description="List each reward's name, kind, version, description and params.")
    _client_args(lst)
    lst.add_argument("--json", action="store_true", help="print JSON instead of a table")
    lst.set_defaults(run=_run_list)

    health = sub.add_parser("health", help="ask a service's gRPC health endpoint (exit 0 when SERVING)",
                            description="Query grpc.health.v1 on a target; exit 0 when SERVING, 1 otherwise.")
    health.add_argument("--target", required=True, help="HOST:PORT")
    health.add_argument("--service", default="", help="service name to ask about (default: the server)")
    health.add_argument("--timeout", type=float, default=5.0, help="seconds to wait (default 5)")
    health.add_argument("--tls-ca", type=Path, default=None, help="CA certificate (PEM) to trust; enables TLS")
    health.set_defaults(run=_run_health)

    tr = sub.add_parser(
        "train",
        help="train a model with a recipe config (grpo, sft, rm, dpo)",
        description="Run the training recipe a YAML config names. Rewards come from the services "
        "its reward.sources name (target: local starts them for the run). Prints the run directory.",
    )
    tr.add_argument("config", type=Path, help="YAML config (see examples/configs/)")
    _set_args(tr)
    tr.add_argument("--resume", action="store_true",
                    help="continue from the latest checkpoint in checkpoint.dir")
    # The deepspeed launcher passes --local_rank; the rank comes from the environment.
    tr.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    tr.set_defaults(run=_run_train)

    ev = sub.add_parser(
        "eval",
        help="evaluate a model on a config's held-out split through the reward services",
        description="Generate for the config's eval split (eval.* settings), score through its "
        "reward.sources, print the eval row (accuracy, mean reward, pass@k) as JSON and write it.",
    )
    ev.add_argument("config", type=Path, help="YAML config (see examples/configs/)")
    _set_args(ev)
    ev.add_argument("--model", default=None,
                    help="model directory (or tiny:<preset>) to evaluate instead of model.path")
    ev.add_argument("--output", type=Path, default=None,
                    help="where to write the JSON row (default <run_dir>/eval.json)")
    ev.set_defaults(run=_run_eval)

    up = sub.add_parser(
        "up",
        help="start the local cluster (verifiers, sandbox, gateway, ...) as processes; Ctrl-C stops it",
        description="Start the compose stack's services as local processes, health-waited in "
        "dependency order, print their addresses, and stop them all on Ctrl-C or SIGTERM. "
        "Without --config: verifiers, sandbox (skipped if bubblewrap cannot run) and a gateway "
        "on 127.0.0.1:50050. See examples/configs/up.yaml.",
    )
    up.add_argument("--config", type=Path, default=None, help="up YAML config (default: the topology above)")
    up.add_argument("--exit-on-failure", action="store_true",
                    help="when a service dies while up, stop the others and exit 1 (default: report it "
                    "and keep the rest running)")
    up.add_argument("--quiet", action="store_true", help="do not echo the services' output")
    up.set_defaults(run=_run_up)
    return p


def _set_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set rollout.n=4; repeatable")


def _load_train_config(args: argparse.Namespace, extra: list[str] = ()) -> Any:
    # Imported here: the trainer pulls in torch, which the services do not need.
    from referee.trainer.config import load_config

    return load_config(args.config, [*args.overrides, *extra])


def _config_error(e: Exception) -> int:
    print(f"error: {e}", file=sys.stderr)
    return 2


def _run_train(args: argparse.Namespace) -> int:
    from referee.trainer.config_load import ConfigError

    try:
        cfg = _load_train_config(args)
    except (ConfigError, FileNotFoundError) as e:
        return _config_error(e)
    from referee.trainer.recipes import train
    from referee.trainer.recipes.off_policy import StaleRolloutError
    from referee.trainer.rollout.sglang import SGLangUnavailableError
    from referee.trainer.rollout.weight_sync import WeightSyncError

    try:
        summary = train(cfg, resume=args.resume)
    except ConfigError as e:  # start-up checks: missing model, unreachable reward target
        return _config_error(e)
    # rollout servers gone mid-run, or holding weights older than the bound
    except (SGLangUnavailableError, WeightSyncError, StaleRolloutError) as e:
        print(f"error: the run stopped: {e}", file=sys.stderr)
        return 1
    if summary:
        print(json.dumps({k: summary.get(k) for k in ("run_dir", "steps", "wall_s",
                                                      "eval_before", "eval_after")}, indent=2))
    return 0 if summary.get("status", "completed") == "completed" else 1


def _run_eval(args: argparse.Namespace) -> int:
    from referee.trainer.config_load import ConfigError

    extra = [f"model.path={args.model}"] if args.model else []
    try:
        cfg = _load_train_config(args, extra)
    except (ConfigError, FileNotFoundError) as e:
        return _config_error(e)
    from referee.trainer.recipes import evaluate_model

    try:
        row = evaluate_model(cfg)
    except ConfigError as e:
        return _config_error(e)
    out = {"model": cfg.model.path, **row}
    path = args.output or Path(cfg.logging.run_dir) / "eval.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    print(f"wrote {path}", file=sys.stderr)
    return 0


def _server_args(p: argparse.ArgumentParser, default_port: int = 50051) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=default_port,
                   help=f"port to bind; 0 picks a free one (default {default_port})")
    p.add_argument("--token", default=None, help=f"require this bearer token (or set {TOKEN_ENV})")
    p.add_argument("--tls-cert", type=Path, default=None, help="PEM certificate chain; enables TLS")
    p.add_argument("--tls-key", type=Path, default=None, help="PEM private key for --tls-cert")
    p.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus metrics on this port")
    p.add_argument("--max-concurrency", type=int, default=64,
                   help="calls served at once; more get RESOURCE_EXHAUSTED (default 64)")
    p.add_argument("--max-request-mb", type=float, default=64.0, help="largest request accepted (default 64)")
    p.add_argument("--grace", type=float, default=30.0, help="seconds to drain on SIGTERM (default 30)")
    p.add_argument("--log-level", default="WARNING", help="Python logging level (default WARNING)")


def _limit_args(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--wall-time", type=float, default=0.0, help=f"{what}wall-clock limit in seconds")
    p.add_argument("--cpu-time", type=float, default=0.0, help=f"{what}CPU-time limit in seconds")
    p.add_argument("--memory-mb", type=int, default=0, help=f"{what}memory limit in MiB")
    p.add_argument("--output-kb", type=int, default=0, help=f"{what}cap on stdout and on stderr, KiB")
    p.add_argument("--max-processes", type=int, default=0, help=f"{what}process/thread limit")


def _limits(args: argparse.Namespace) -> Any:
    from referee.sandboxes.types import Limits

    return Limits(
        wall_time_s=args.wall_time,
        cpu_time_s=args.cpu_time,
        memory_bytes=args.memory_mb * 1024 * 1024,
        output_bytes=args.output_kb * 1024,
        max_processes=args.max_processes,
        file_size_bytes=0,
        open_files=0,
    )


def _client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", required=True, help="HOST:PORT; comma-separate several replicas")
    p.add_argument("--token", default=None, help=f"bearer token (or set {TOKEN_ENV})")
    p.add_argument("--tls-ca", type=Path, default=None, help="CA certificate (PEM) to trust; enables TLS")
    p.add_argument("--timeout", type=float, default=60.0, help="deadline per call in seconds (default 60)")


def _server_config(args: argparse.Namespace) -> Any:
    from referee.rewardsvc.config import ServerConfig

    return ServerConfig(
        host=args.host,
        port=args.port,
        token=args.token or os.environ.get(TOKEN_ENV) or None,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        metrics_port=args.metrics_port,
        max_concurrency=args.max_concurrency,
        max_request_bytes=int(args.max_request_mb * 1024 * 1024),
        grace_s=args.grace,
    )


def _setup_logging(args: argparse.Namespace) -> None:
    """The servers' log format, at --log-level."""
    import logging

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _run_serve_verifiers(args: argparse.Namespace) -> int:
    from referee.registry import BUILTIN, ENTRYPOINTS, LoadError
    from referee.rewardsvc.config import VerifierPoolConfig
    from referee.rewardsvc.server import serve
    from referee.rewardsvc.verifier_service import VerifierService

    _setup_logging(args)
    # Like uvicorn, make modules in the working directory loadable with --load.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    specs = ([] if args.no_builtins else [BUILTIN]) + ([] if args.no_entrypoints else [ENTRYPOINTS])
    specs += args.load
    sandbox = args.sandbox or os.environ.get("REFEREE_SANDBOX")
    if sandbox:
        # Read by the `code` verifier (in this process and in the workers it starts).
        os.environ["REFEREE_SANDBOX"] = sandbox
    try:
        cfg = _server_config(args)
        pool_cfg = VerifierPoolConfig(
            workers=args.workers, timeout_s=args.timeout, cache_size=args.cache_size,
            worker_memory_mb=args.worker_memory_mb, max_batch_samples=args.max_batch,
        )
        service = VerifierService(specs, pool_cfg)
    except (ValueError, LoadError) as e:
        print(f"referee serve verifiers: {e}", file=sys.stderr)
        return 2
    print(f"serving rewards: {', '.join(sorted(service.rewards))}", flush=True)
    asyncio.run(serve(cfg, [service], "verifiers"))
    return 0


def _run_serve_gateway(args: argparse.Namespace) -> int:
    from referee.rewardsvc.gateway import serve_gateway
    from referee.rewardsvc.gateway_config import load_gateway_config

    _setup_logging(args)
    try:
        cfg = _server_config(args)
        gateway = load_gateway_config(args.config)  # GatewayConfigError is a ValueError
    except ValueError as e:
        print(f"referee serve gateway: {e}", file=sys.stderr)
        return 2
    print(f"serving rewards: {', '.join(sorted(gateway.rewards))}", flush=True)
    asyncio.run(serve_gateway(cfg, gateway))
    return 0


def _run_serve_judge(args: argparse.Namespace) -> int:
    from referee.rewardsvc.judge import JudgeConfig
    from referee.rewardsvc.judge_service import JudgeService
    from referee.rewardsvc.server import serve

    _setup_logging(args)
    try:
        cfg = _server_config(args)
        judge_cfg = JudgeConfig(
            endpoint=args.endpoint, model=args.model, api_key_env=args.api_key_env or None,
            max_concurrency=args.judge_concurrency, timeout_s=args.timeout, retries=args.retries,
            backoff_s=args.backoff, max_backoff_s=max(8.0, args.backoff), cache_size=args.cache_size,
        )
        service = JudgeService(judge_cfg, max_batch_samples=args.max_batch)
    except ValueError as e:
        print(f"referee serve judge: {e}", file=sys.stderr)
        return 2
    print(f"judge: {args.model} at {args.endpoint}", flush=True)
    asyncio.run(serve(cfg, [service], "judge"))
    return 0


def _run_serve_reward_model(args: argparse.Namespace) -> int:
    import gc

    import torch

    from referee.rewardsvc.reward_model import RewardModelConfig, RewardModelService
    from referee.rewardsvc.server import serve

    _setup_logging(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        cfg = _server_config(args)
        rm_cfg = RewardModelConfig(
            model=args.model, name=args.name, device=args.device, dtype=args.dtype,
            max_length=args.max_length, truncation=args.truncation, max_batch_size=args.max_batch_size,
            max_wait_ms=args.max_wait_ms, max_batch_tokens=args.max_batch_tokens, normalize=args.normalize,
            norm_offset=args.norm_offset, norm_scale=args.norm_scale, timeout_s=args.timeout,
            max_batch_samples=args.max_batch,
        )
        service = RewardModelService(rm_cfg)
    except (ValueError, OSError) as e:
        print(f"referee serve reward-model: {e}", file=sys.stderr)
        return 2
    # torch, transformers and the tokenizer are ~200k long-lived objects; under load a
    # full garbage collection walked them all every few seconds (~0.1 s holding the GIL,
    # stalling every call). Frozen, collections skip them. (The model process does the same.)
    gc.freeze()
    print(f"reward model: {args.model} as {args.name} ({service.rm.architecture}, "
          f"{service.rm.pooling} pooling, max_length {service.max_length}, {args.dtype} on {args.device})",
          flush=True)
    asyncio.run(serve(cfg, [service], "reward-model"))
    return 0


def _run_serve_sandbox(args: argparse.Namespace) -> int:
    from referee.rewardsvc.server import serve
    from referee.sandboxes.backends import make_backend
    from referee.sandboxes.service import SandboxConfig, SandboxService
    from referee.sandboxes.types import Limits

    _setup_logging(args)
    try:
        cfg = _server_config(args)
        sandbox_cfg = SandboxConfig(slots=args.slots, max_queue=args.max_queue,
                                    defaults=Limits().merged_with(_limits(args), SandboxConfig().ceiling))
        options: dict[str, Any] = {}
        if args.backend == "docker":
            options = {"image": args.docker_image, "pool_size": args.docker_pool_size or args.slots}
        backend = make_backend(args.backend, allow_unsafe=args.allow_unsafe, **options)
    except (ValueError, RuntimeError, OSError) as e:
        print(f"referee serve sandbox: {e}", file=sys.stderr)
        return 2
    toolchains = backend.languages()
    print(f"sandbox backend: {backend.name} {json.dumps(backend.describe())}", flush=True)
    for t in toolchains:
        print(f"  {t.language:<11} {'ok' if t.available else 'MISSING':<8} {t.detail}", flush=True)
    asyncio.run(serve(cfg, [SandboxService(backend, sandbox_cfg, toolchains)], "sandbox"))
    return 0


def _run_serve_rollout(args: argparse.Namespace) -> int:
    import torch

    from referee.trainer.rollout.serve import load_backend, serve

    # One thread per process on CPU unless asked (see referee.trainer.recipes.common).
    if args.threads or not torch.cuda.is_available():
        torch.set_num_threads(args.threads or 1)
    try:
        if args.max_total_tokens is not None and args.max_total_tokens < 1:
            raise ValueError("--max-total-tokens must be >= 1")
        if args.max_batch_size < 1:
            raise ValueError("--max-batch-size must be >= 1")
        if not 0 <= args.batch_wait_ms <= 10_000:
            raise ValueError("--batch-wait-ms must be between 0 and 10000")
        backend = load_backend(args.model, dtype=args.dtype, max_total_tokens=args.max_total_tokens,
                               weight_version=args.weight_version, max_batch_size=args.max_batch_size,
                               batch_wait_ms=args.batch_wait_ms)
    except (ValueError, OSError) as e:
        print(f"referee serve rollout: {e}", file=sys.stderr)
        return 2
    print(f"rollout model: {args.model} (context {backend.context_len} tokens, {args.dtype})", flush=True)
    serve(backend, args.host, args.port, log_level=args.log_level)
    return 0


def _run_exec(args: argparse.Namespace) -> int:
    from referee.sandboxes.client import SandboxCallError, SandboxClient, SandboxUnavailable
    from referee.sandboxes.types import Job

    try:
        code = args.file.read_text(encoding="utf-8")
        stdin = args.stdin.read_bytes() if args.stdin else b""
    except (OSError, UnicodeDecodeError) as e:
        print(f"referee exec: {e}", file=sys.stderr)
        return 2
    job = Job(language=args.language, code=code, stdin=stdin, args=tuple(args.arg), limits=_limits(args))

    async def go() -> Any:
        token = args.token or os.environ.get(TOKEN_ENV) or None
        async with SandboxClient(args.target, token=token, tls_ca=args.tls_ca, timeout_s=args.timeout) as c:
            return await c.execute(job)

    try:
        r = asyncio.run(go())
    except (SandboxCallError, SandboxUnavailable) as e:
        print(f"referee exec: {e}", file=sys.stderr)
        return 2
    sys.stdout.buffer.write(r.stdout)
    sys.stdout.flush()
    sys.stderr.buffer.write(r.stderr)
    exit_part = f"exit {r.exit_code}" if r.exit_code is not None else f"signal {r.signal}"
    print(f"verdict: {r.verdict.value} ({exit_part}; wall {r.usage.wall_time_s:.3f}s, cpu {r.usage.cpu_time_s:.3f}s, "
          f"peak {r.usage.peak_memory_bytes // 1024} KiB){' ' + r.message if r.message else ''}", file=sys.stderr)
    return 0 if r.verdict.value == "OK" else 1


def _client(args: argparse.Namespace) -> Any:
    from referee.rewardsvc.client import RewardClient

    return RewardClient(
        args.target,
        token=args.token or os.environ.get(TOKEN_ENV) or None,
        tls_ca=args.tls_ca,
        timeout_s=args.timeout,
    )


def _read_samples(stream: TextIO, name: str) -> list[Any]:
    from referee.convert import sample_from_json

    samples = []
    for n, line in enumerate(stream, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{name} line {n}: not valid JSON ({e.msg} at column {e.colno})") from None
        samples.append(sample_from_json(row, f"{name} line {n}"))
    return samples


def _run_score(args: argparse.Namespace) -> int:
    from referee.rewardsvc.client import RewardCallError

    try:
        params = json.loads(args.params)
        if not isinstance(params, dict):
            raise ValueError("--params must be a JSON object")
        if args.input == "-":
            samples = _read_samples(sys.stdin, "stdin")
        else:
            with open(args.input, encoding="utf-8") as f:
                samples = _read_samples(f, args.input)
    except (OSError, ValueError) as e:
        print(f"referee score: {e}", file=sys.stderr)
        return 2

    async def go() -> list[Any]:
        async with _client(args) as c:
            return await c.score(args.reward, samples, params)

    try:
        scores = asyncio.run(go())
    except RewardCallError as e:
        print(f"referee score: {e}", file=sys.stderr)
        return 1
    out = sys.stdout if args.output == "-" else open(args.output, "w", encoding="utf-8")
    try:
        for s in scores:
            out.write(json.dumps(s.to_json(), ensure_ascii=False) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    counts = Counter(s.status.value for s in scores)
    summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    print(f"scored {len(scores)} samples: {summary}", file=sys.stderr)
    return 0


def _run_list(args: argparse.Namespace) -> int:
    from referee.rewardsvc.client import RewardCallError

    async def go() -> list[Any]:
        async with _client(args) as c:
            return await c.list_rewards()

    try:
        rewards = asyncio.run(go())
    except RewardCallError as e:
        print(f"referee list: {e}", file=sys.stderr)
        return 1
    if args.json:
        from dataclasses import asdict

        print(json.dumps([asdict(r) for r in rewards], indent=2))
        return 0
    for r in rewards:
        print(f"{r.name}  [{r.kind} v{r.version}, {r.timeout_s:g}s]  {r.description}")
        for p in r.params:
            default = "required" if p.required else f"default {p.default_json}"
            print(f"    {p.name}: {p.type} ({default})  {p.description}")
    return 0


def _run_up(args: argparse.Namespace) -> int:
    from referee.up import run_up
    from referee.up_config import UpConfig, UpConfigError, load_up_config

    try:
        cfg = load_up_config(args.config) if args.config else UpConfig()
    except UpConfigError as e:
        print(f"referee up: {e}", file=sys.stderr)
        return 2
    return run_up(cfg, exit_on_failure=args.exit_on_failure, show_logs=not args.quiet)


def _run_health(args: argparse.Namespace) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    if args.tls_ca is not None:
        creds = grpc.ssl_channel_credentials(root_certificates=args.tls_ca.read_bytes())
        channel = grpc.secure_channel(args.target, creds)
    else:
        channel = grpc.insecure_channel(args.target)
    with channel:
        try:
            resp = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout
            )
        except grpc.RpcError as e:
            print(f"{args.target}: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
    print(status)
    return 0 if resp.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    main()
