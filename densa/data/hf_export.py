"""Export a SentencePiece model as an HF tokenizer folder that encodes exactly like SentencePiece.

We build `tokenizer.json` directly with the `tokenizers` library from the model proto instead of
going through a generic converter, because the known export traps (huggingface/tokenizers#1682,
transformers#25316) come from per-segment prefix spaces, legacy handling after special tokens and
lost byte fallback. The pieces that make it exact:

- the normalizer reproduces SentencePiece's: optional precompiled charsmap, optional whitespace
  cleanup, spaces to `▁`;
- the dummy prefix `▁` goes on the first segment only (`Metaspace` with `prepend_scheme="first"`), not
  after every special token (the "legacy" behaviour);
- a pre-tokenizer splits before every `▁` (SentencePiece's `split_by_whitespace`);
- BPE merges are ranked by the score of the merged piece; byte fallback is kept.

One difference cannot be expressed in `tokenizers`: for a model with `add_dummy_prefix` (Llama-2 style),
text that starts with whitespace or with a user-defined symbol differs (SentencePiece adds a `▁`
there, `Metaspace` sees the text as already prefixed or starts after the special token).
`train_sentencepiece` therefore defaults to `add_dummy_prefix=False`, whose export is exact everywhere.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from densa.errors import DataError

SPACE = "\u2581"
# sentencepiece ModelProto.SentencePiece.Type
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def load_sp_proto(model_path: str | Path):
    """Parse a `.model` file into a `ModelProto`."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    try:
        proto.ParseFromString(Path(model_path).read_bytes())
    except Exception as err:  # protobuf raises its own DecodeError
        raise DataError(f"{model_path} is not a SentencePiece model: {err}") from None
    return proto


def _bpe_merges(pieces: list[tuple[str, float, int]]) -> list[tuple[str, str]]:
    """All (left, right) pairs whose concatenation is a normal piece, best merged score first."""
    vocab = {p: (score, i) for i, (p, score, kind) in enumerate(pieces) if kind in (NORMAL, USER_DEFINED)}
    merges = []
    for piece, (score, idx) in vocab.items():
        for k in range(1, len(piece)):
            left, right = piece[:k], piece[k:]
            if left in vocab and right in vocab:
                merges.append((-score, idx, vocab[left][1], vocab[right][1], left, right))
    merges.sort()
    return [(m[4], m[5]) for m in merges]


def build_hf_tokenizer(model_path: str | Path):
    """A `tokenizers.Tokenizer` equivalent to the SentencePiece model (no post-processing)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    proto = load_sp_proto(model_path)
    spec, norm = proto.trainer_spec, proto.normalizer_spec
    pieces = [(p.piece, p.score, p.type) for p in proto.pieces]
    unk_id = next((i for i, p in enumerate(pieces) if p[2] == UNKNOWN), 0)
    byte_fallback = bool(spec.byte_fallback)
    if spec.model_type == 2:  # BPE
        vocab = {p: i for i, (p, _, _) in enumerate(pieces)}
        model = models.BPE(
            vocab=vocab,
            merges=_bpe_merges(pieces),
            unk_token=pieces[unk_id][0],
            fuse_unk=True,
            byte_fallback=byte_fallback,
        )
    elif spec.model_type == 1:  # unigram
        scores = [(p, s if kind in (NORMAL, BYTE, USER_DEFINED) else 0.0) for p, s, kind in pieces]
        model = models.Unigram(scores, unk_id=unk_id, byte_fallback=byte_fallback)
    else:
        raise DataError(f"{model_path}: only BPE and unigram SentencePiece models can be exported")
    if spec.treat_whitespace_as_suffix or not spec.split_by_whitespace:
        raise DataError(f"{model_path}: whitespace-as-suffix / no whitespace split is not supported")

    steps = []
    if norm.precompiled_charsmap:
        steps.append(normalizers.Precompiled(norm.precompiled_charsmap))
    if norm.remove_extra_whitespaces:
        steps += [normalizers.Strip(left=True, right=True), normalizers.Replace(Regex(" {2,}"), " ")]
    steps.append(normalizers.Replace(" ", SPACE))
    tok = Tokenizer(model)
    tok.normalizer = normalizers.Sequence(steps)
    prepend = "first" if norm.add_dummy_prefix else "never"
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme=prepend, split=True)
    dec = [decoders.Replace(SPACE, " ")]
    if byte_fallback:
        dec.append(decoders.ByteFallback())
    dec.append(decoders.Fuse())
    if norm.add_dummy_prefix:
        dec.append(decoders.Strip(content=" ", left=1, right=0))
    tok.decoder = decoders.Sequence(dec)
    added = [
        AddedToken(p, special=True, normalized=False)
        for p, _, kind in pieces
        if kind in (CONTROL, USER_DEFINED, UNKNOWN)
    ]
    tok.add_special_tokens(added)
    return tok, proto


def export_sentencepiece_to_hf(model_path: str | Path, out_dir: str | Path, add_bos: bool = True) -> Path:
    """Write `tokenizer.json`, `tokenizer_config.json`, `special_tokens_map.json` and `tokenizer.model`.

    With `add_bos`, `tokenizer(text)` prepends BOS like Llama tokenizers do; `add_special_tokens=False`
    gives exactly SentencePiece's ids.
    """
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    tok, proto = build_hf_tokenizer(model_path)
    spec = proto.trainer_spec
    pieces = [p.piece for p in proto.pieces]

    def piece(i: int) -> str | None:
        return pieces[i] if 0 <= i < len(pieces) else None

    bos, eos, pad, unk = piece(spec.bos_id), piece(spec.eos_id), piece(spec.pad_id), piece(spec.unk_id)
    if add_bos and bos is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, spec.bos_id)]
        )
    user_defined = [p.piece for p in proto.pieces if p.type == USER_DEFINED]
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        unk_token=unk,
        additional_special_tokens=user_defined,
        clean_up_tokenization_spaces=False,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(str(out))
    shutil.copyfile(model_path, out / "tokenizer.model")
    special_map = {
        k: v for k, v in dict(bos_token=bos, eos_token=eos, pad_token=pad, unk_token=unk).items() if v
    }
    special_map["additional_special_tokens"] = user_defined
    (out / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2) + "\n", encoding="utf-8")
    return out
