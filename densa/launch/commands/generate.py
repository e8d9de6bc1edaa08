"""`densa generate --model PATH --prompt TEXT`: sample a continuation with the model's own tokenizer."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser("generate", help="sample text from a checkpoint or HF folder")
    p.add_argument("--model", required=True, help="HF folder, densa model folder, run dir or step_N")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokenizer", default=None, help="default: the model's own")
    p.add_argument("--no-bos", dest="bos", action="store_false", help="do not prepend BOS to the prompt")
    p.add_argument(
        "--chat",
        action="store_true",
        help="wrap --prompt as a user message in the tokenizer's chat template (with the assistant prompt)",
    )
    p.add_argument(
        "--moe-top-k",
        type=int,
        default=None,
        metavar="K",
        help="MoE folder (densa moefy): experts per token (default: moe.json's top_k; K = experts is dense)",
    )
    p.add_argument(
        "--moe-backend",
        choices=("auto", "native", "triton", "torch", "reference"),
        default="auto",
        help="MoE folder: decode steps through the expert kernels (auto: native C on CPU fp32, Triton on "
        "CUDA) or the reference MoE layer (default: %(default)s; see docs/inference.md)",
    )
    kv = p.add_argument_group("KV-cache policy (chunked prefill under a budget; greedy decoding)")
    kv.add_argument(
        "--kv-policy",
        default=None,
        help="full, streaming_llm, h2o, snapkv, random, locret or infllm (block memory; no --budget, its "
        "settings come as --kv-option n_local=... block_size=... topk=..., see docs/infllm.md)",
    )
    kv.add_argument("--budget", type=int, default=None, help="KV entries kept per layer and head")
    kv.add_argument("--chunk", type=int, default=256, help="prefill chunk length (default: %(default)s)")
    kv.add_argument("--heads", default=None, help="locret: retaining-heads file (save_heads output)")
    kv.add_argument(
        "--kv-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="policy option, e.g. n_stabilizers=8 or (infllm) n_local=1024",
    )
    sparse = p.add_argument_group(
        "sparse FFN (prefill dense; every one-token decode step through densa.kernels.sparse_ffn)"
    )
    sparse.add_argument(
        "--sparsity",
        metavar="REPORT",
        default=None,
        help="sparsity.json from `densa sparsity measure`, or comma-separated per-layer CETT thresholds "
        "(0,0,...: exact for a ReLU model)",
    )
    sparse.add_argument(
        "--predictors",
        metavar="FILE",
        default=None,
        help="per-layer neuron predictors from `densa sparsity predictors` (needs --sparsity): "
        "only the predicted rows of every FFN weight are read",
    )
    sparse.add_argument(
        "--sparse-backend",
        choices=("auto", "torch", "triton", "reference"),
        default="auto",
        help="sparse_ffn backend (default: %(default)s; triton needs --device cuda)",
    )
    sparse.add_argument(
        "--device", default="cpu", help="device for the sparse path, e.g. cuda (default: %(default)s)"
    )
    p.set_defaults(handler=_handler)


def _handler(args) -> int:
    import torch

    from densa.data.tokenizer import load_tokenizer
    from densa.errors import DensaError
    from densa.inference.moe_path import moe_kernels_installed
    from densa.models.generation import generate
    from densa.train.finetune import find_tokenizer, load_model

    if args.max_new_tokens < 1 or not 0 < args.top_p <= 1 or args.temperature < 0:
        raise DensaError("need --max-new-tokens >= 1, 0 < --top-p <= 1 and --temperature >= 0")
    thresholds = _check_sparse_args(args)  # before loading the model
    model = _load(args, load_model)
    tok_path = args.tokenizer or find_tokenizer(args.model)
    if tok_path is None:
        raise DensaError(f"{args.model}: no tokenizer found next to the model; pass --tokenizer")
    tok = load_tokenizer(tok_path)
    ids = chat_ids(tok, tok_path, args.prompt) if args.chat else tok.encode(args.prompt)
    if args.bos and not args.chat and tok.bos_id is not None and (not ids or ids[0] != tok.bos_id):
        ids = [tok.bos_id, *ids]
    if not ids:
        raise DensaError("the prompt encodes to no tokens")
    _warn_past_context(len(ids), args.max_new_tokens, model.config.max_seq_len)
    _fit_vocabularies(model, tok, tok_path, ids)
    if thresholds is not None:
        new = _generate_sparse(model, ids, args, tok, thresholds)
        print(tok.decode(_strip_bos(ids, tok, args) + _until_end(new, args)))
        return 0
    # An MoE model decodes through the expert kernels (a dense one through its own layers).
    with moe_kernels_installed(model, args.moe_backend):
        if args.kv_policy is not None:
            new = _generate_with_policy(model, ids, args, tok.eos_id)
            print(tok.decode(_strip_bos(ids, tok, args) + _until_end(new, args)))
            return 0
        generator = torch.Generator().manual_seed(args.seed)
        ends = [e for e in (tok.eos_id, *_chat_ends(args)) if e is not None]
        out = generate(
            model,
            torch.tensor([ids]),
            args.max_new_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            eos_token_id=list(dict.fromkeys(ends)),  # --chat: also stop at a chat turn's end token
            generator=generator,
        )
    new = out[0, len(ids) :].tolist()
    if tok.eos_id is not None and tok.eos_id in new:
        new = new[: new.index(tok.eos_id)]
    print(tok.decode(_strip_bos(ids, tok, args) + _until_end(new, args)))
    return 0


def _load(args, load_model):
    """The model in the form its folder says: an MoE folder (moe.json) runs its top-k experts, and says so
    on stderr; anything else loads dense."""
    import sys

    from densa.errors import DensaError
    from densa.sparse_moe.inference import MOE_FILE, is_moe_checkpoint, load_moe

    if not is_moe_checkpoint(args.model):
        if args.moe_top_k is not None:
            raise DensaError(
                f"--moe-top-k needs an MoE folder (densa moefy output); {args.model} has no {MOE_FILE}"
            )
        return load_model(args.model)
    if args.sparsity is not None:
        raise DensaError(
            f"--sparsity runs dense FFN layers; {args.model} is an MoE folder: drop --sparsity (or pass the "
            "dense model it came from)"
        )
    model = load_moe(args.model, top_k=args.moe_top_k)
    ffn = model.layers[0].ffn
    print(
        f"densa generate: MoE form ({MOE_FILE}): top-{ffn.top_k} of {ffn.num_experts} experts per token",
        file=sys.stderr,
    )
    return model


def chat_ids(tok, tok_path, prompt: str) -> list[int]:
    """The prompt as one user message in the tokenizer's chat template, ending with the assistant's turn
    header (the template decides BOS, so no BOS is added on top)."""
    from densa.data.tokenizer import HFTokenizer
    from densa.errors import DensaError

    if not isinstance(tok, HFTokenizer) or not tok.has_chat_template:
        raise DensaError(
            f"--chat: the tokenizer {tok_path} has no chat template (chat_template in tokenizer_config.json"
            " or chat_template.jinja); drop --chat or pass a chat model's --tokenizer"
        )
    messages = [{"role": "user", "content": prompt}]
    ids = tok.tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # transformers >= 5 returns a BatchEncoding
        ids = ids["input_ids"]
    return [int(i) for i in ids]


def _fit_vocabularies(model, tok, tok_path, ids: list[int]) -> None:
    """A prompt id the embedding lacks is an error (the tokenizer is not the model's); an embedding padded
    past the tokenizer (e.g. to a multiple of 64) never yields an id the tokenizer cannot decode."""
    from densa.errors import DensaError

    vocab = model.config.vocab_size
    if max(ids) >= vocab:
        raise DensaError(
            f"tokenizer {tok_path}: the prompt encodes to id {max(ids)}, beyond the model's vocab_size "
            f"{vocab}; the tokenizer does not belong to this model (pass the right --tokenizer)"
        )
    if vocab > tok.vocab_size:

        def hide_padding(module, args, logits):
            logits[..., tok.vocab_size :] = float("-inf")
            return logits

        model.register_forward_hook(hide_padding)


def _warn_past_context(prompt_tokens: int, max_new_tokens: int, max_seq_len: int) -> None:
    """Generation runs past max_seq_len (RoPE positions extrapolate, as HF does), but never silently."""
    import sys

    total = prompt_tokens + max_new_tokens
    if total > max_seq_len:
        print(
            f"densa generate: warning: prompt ({prompt_tokens} tokens) + --max-new-tokens {max_new_tokens} = "
            f"{total} exceeds the model's max_seq_len {max_seq_len}; positions past it are extrapolated and "
            "the output may degrade",
            file=sys.stderr,
        )


def _chat_ends(args) -> list[int]:
    """--chat: the model's end tokens (generation_config.json's eos_token_id, e.g. a chat turn's
    <|im_end|> besides the tokenizer's EOS); none otherwise."""
    import json
    from pathlib import Path

    path = Path(args.model) / "generation_config.json"
    if not args.chat or not path.is_file():
        return []
    eos = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id")
    return [int(e) for e in (eos if isinstance(eos, list) else [eos] if eos is not None else [])]


def _until_end(new: list[int], args) -> list[int]:
    """--chat: cut at the first of the model's end tokens (`_chat_ends`)."""
    ends = set(_chat_ends(args))
    return next((new[:i] for i, t in enumerate(new) if t in ends), new)


def _strip_bos(ids: list[int], tok, args) -> list[int]:
    """The prompt part of the printed text: without BOS; --chat prints the reply only."""
    if args.chat:
        return []
    return ids[1:] if args.bos and tok.bos_id is not None and ids[0] == tok.bos_id else ids


def _generate_with_policy(model, ids: list[int], args, eos_id: int | None) -> list[int]:
    """Chunked prefill with `--kv-policy` keeping at most `--budget` entries, then greedy decoding."""
    import sys

    import torch

    from densa.longctx import build_policy, generate_with_policy

    options = _kv_options(args)
    if args.temperature > 0:
        print(
            "densa generate: KV-policy generation decodes greedily; --temperature is ignored", file=sys.stderr
        )
    policy = build_policy(args.kv_policy, **options)
    result = generate_with_policy(
        model, torch.tensor([ids]), policy, args.budget, args.chunk, args.max_new_tokens, eos_token_id=eos_id
    )
    stats = result.stats
    if stats.memory is not None:  # InfLLM: block memory instead of a budget
        mem = stats.memory
        print(
            f"densa generate: policy {policy.name}, chunk {args.chunk}: {stats.tokens_seen} tokens, "
            f"{mem['units']} memory units, {mem['unit_loads']} unit loads, {mem['cache_hits']} cache hits, "
            f"{mem['attended_mean']:.1f} attended tokens per query, peak {stats.peak_kv_tokens} KV entries "
            "on the device",
            file=sys.stderr,
        )
    else:
        print(
            f"densa generate: policy {policy.name}, budget {args.budget}, chunk {args.chunk}: "
            f"peak {stats.peak_kv_tokens} KV entries for {stats.tokens_seen} tokens, "
            f"{stats.evictions} evictions",
            file=sys.stderr,
        )
    new = result.tokens[0, len(ids) :].tolist()
    if eos_id is not None and eos_id in new:
        new = new[: new.index(eos_id)]
    return new


def _kv_options(args) -> dict:
    import yaml

    from densa.errors import DensaError

    options = {}
    for item in args.kv_option:
        key, sep, value = item.partition("=")
        if not sep:
            raise DensaError(f"--kv-option {item!r}: expected KEY=VALUE")
        options[key] = yaml.safe_load(value)
    if args.heads is not None:
        options["heads"] = args.heads
    return options


def _check_sparse_args(args) -> list[float] | None:
    """The --sparsity layer thresholds (None: dense path); errors for flags that need --sparsity."""

    from densa.errors import DensaError
    from densa.launch.commands.sparsity import parse_thresholds

    if args.sparsity is None:
        if args.predictors is not None:
            raise DensaError(
                "--predictors needs --sparsity (e.g. --sparsity 0,0,0,0 for exact ReLU thresholds)"
            )
        if args.sparse_backend != "auto" or args.device != "cpu":
            raise DensaError("--sparse-backend and --device apply to the sparse path; add --sparsity")
        return None
    if args.sparse_backend == "triton" and not args.device.startswith("cuda"):
        raise DensaError("--sparse-backend triton needs --device cuda")
    return parse_thresholds(args.sparsity, "--sparsity")


def _generate_sparse(model, ids: list[int], args, tok, thresholds: list[float]) -> list[int]:
    """Decode through InferenceEngine with ffn="sparse" (sampling as --temperature/--top-p say; under
    --kv-policy too, since the engine samples inside a KV policy session); stats line on stderr."""
    import sys

    from densa.errors import DensaError
    from densa.inference import GenerationConfig, InferenceEngine
    from densa.sparsity.predictor_io import read_predictors_metadata

    try:
        model = model.to(args.device)
    except (RuntimeError, AssertionError) as err:  # torch raises AssertionError when built without CUDA
        raise DensaError(f"--device {args.device}: {err}") from None
    engine = InferenceEngine(model, tok)
    n_layers = model.config.n_layers
    if len(thresholds) != n_layers:
        raise DensaError(
            f"--sparsity {args.sparsity}: {len(thresholds)} layer thresholds, the model has {n_layers} layers"
        )
    engine.set_sparsity(thresholds)
    if args.predictors is not None:
        engine.set_predictors(args.predictors)  # SparsityError naming the file on a shape mismatch
        trained_for = read_predictors_metadata(args.predictors).get("layer_thresholds")
        if trained_for is not None and [float(t) for t in trained_for] != thresholds:
            # Still usable, but recall is measured against --sparsity's rule, not the one they learned.
            print(
                f"densa generate: note: {args.predictors} was trained for thresholds {trained_for}, "
                f"--sparsity gives {thresholds}",
                file=sys.stderr,
            )
    config = GenerationConfig(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        add_bos=False,  # ids already carry BOS as --no-bos says
    )
    kv = {}
    if args.kv_policy is not None:
        kv = dict(
            kv_policy=args.kv_policy, kv_budget=args.budget, kv_chunk=args.chunk, kv_options=_kv_options(args)
        )
    out = engine.generate(
        [ids], config, ffn="sparse", sparse_backend=args.sparse_backend, track_sparsity=True, **kv
    )
    stats = out.stats

    def per_layer(values: list[float] | None) -> str:
        return "[" + ", ".join(f"{v:.3f}" for v in values or []) + "]"

    print(
        f"densa generate: sparse FFN ({args.sparse_backend} backend, "
        f"{'predictors ' + args.predictors if args.predictors else 'no predictors'}): "
        f"activation ratio {per_layer(stats.activation_ratio)}, read ratio {per_layer(stats.read_ratio)}, "
        f"predictor recall {per_layer(stats.predictor_recall)}; "
        f"{stats.decode_tokens_per_s:.1f} decode tok/s",
        file=sys.stderr,
    )
    for policy_stats in stats.kv:
        print(
            f"densa generate: policy {args.kv_policy}, budget {args.budget}, chunk {args.chunk}: "
            f"peak {policy_stats.peak_kv_tokens} KV entries for {policy_stats.tokens_seen} tokens, "
            f"{policy_stats.evictions} evictions",
            file=sys.stderr,
        )
    return out.generations[0].token_ids
