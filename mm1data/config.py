"""Typed, frozen config objects. YAML recipes in ``pipelines/`` load into :class:`Recipe`.

Every section is a frozen dataclass with defaults; a recipe only names what it changes. Unknown
keys and wrong types fail fast with a :class:`~mm1data.errors.UsageError` naming the key.
YAML is read with ``yaml.safe_load``: a recipe cannot execute code.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from mm1data.errors import UsageError

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_RECIPE = REPO_ROOT / "pipelines" / "sample.yaml"


@dataclass(frozen=True)
class SourceSpec:
    """One input: a path or glob (local or ``s3://``) and its format (``auto`` detects it).

    Relative paths in a recipe are resolved against the recipe's folder.
    """

    path: str
    format: str = "auto"
    images: str | None = None  # image folder for COCO json and MMC4 jsonl sources
    name: str | None = None  # dataset name recorded on text docs (e.g. "c4")


@dataclass(frozen=True)
class Sources:
    """Inputs per kind. Synthetic captions are joined onto caption pairs."""

    captions: tuple[SourceSpec, ...] = ()
    interleaved: tuple[SourceSpec, ...] = ()
    text: tuple[SourceSpec, ...] = ()
    synthetic_captions: tuple[SourceSpec, ...] = ()

    def is_empty(self) -> bool:
        """True when no source of any kind is given."""
        return not (self.captions or self.interleaved or self.text or self.synthetic_captions)


DISALLOWED_HEADER_DIRECTIVES = ("noai", "noimageai", "noindex", "noimageindex")


@dataclass(frozen=True)
class DownloadConfig:
    """The ``download:`` section: fetch images that sources give only as URLs.

    Off by default (``enabled``; ``--download`` on ``ingest`` / ``build``). When on, caption tables
    with a URL column and no bytes, MMC4 ``image_info[].raw_url`` and OBELICS image URLs become
    *pending* images that the download phase fetches (each distinct URL once per build) instead of
    ``no_image_bytes`` / ``image_missing`` rejects. Column names: ``None`` recognises LAION
    ``URL``/``TEXT``, DataComp ``url``/``text`` and the usual others. ``hash_col`` names a column
    with the expected digest of the image (``hash_type`` ``sha256`` as DataComp ships, or ``md5``).

    Network defaults: 10 s total timeout as img2dataset's ``timeout``; at most 6 connections per
    host as browsers (Chrome, Firefox) allow; 10 redirects as aiohttp's and curl's usual limit;
    2 retries (3 attempts) with exponential backoff (0.5 s, doubled, half of it jittered, capped at
    30 s) on connection errors, timeouts, 408, 429 and 5xx, honouring ``Retry-After`` up to
    ``max_retry_after_s``; the ``X-Robots-Tag`` directives of img2dataset's
    ``disallowed_header_directives`` (``noai``, ``noimageai``, ``noindex``, ``noimageindex``),
    also when scoped to ``user_agent_token``; robots.txt (RFC 9309) only when ``robots_txt``.
    ``dns_servers`` (``host[:port]``) replaces the system resolver (img2dataset's users are told to
    run a local caching resolver for the same reason); ``allow_networks`` confines connections to
    the given networks (a crawl kept inside a VPC, or tests kept on ``127.0.0.0/8``), also for URLs
    that name an IP address. Proxy (``HTTP(S)_PROXY``, ``NO_PROXY``) and
    CA (``SSL_CERT_FILE``, ``SSL_CERT_DIR``, ``REQUESTS_CA_BUNDLE``, ``CURL_CA_BUNDLE``) environment
    variables are respected."""

    enabled: bool = False
    url_col: str | None = None
    caption_col: str | None = None
    hash_col: str | None = None
    hash_type: str = "sha256"
    timeout_s: float = 10.0  # whole request, body included, per attempt
    connect_timeout_s: float = 5.0  # DNS + TCP + TLS
    retries: int = 2
    backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    max_retry_after_s: float = 60.0  # a longer Retry-After fails the attempt (reason kept)
    max_redirects: int = 10
    max_bytes: int = 20 * 1024 * 1024  # body cap, the same as ingest.max_image_bytes
    concurrency: int = 64  # requests in flight per fetch task
    per_host: int = 6  # requests in flight per host and fetch task
    urls_per_task: int = 256  # distinct URLs one fetch task takes (tasks grow with the URLs)
    task_cpus: float = 1.0  # CPUs a fetch task holds (it decodes every image it fetches)
    checkpoint_rows: int = 256  # results per checkpoint part, at most
    checkpoint_s: float = 5.0  # a part is written at least this often while fetching
    rows_per_partition: int = 100_000  # URL/reference rows per plan and stats partition (ROWS_PER_TASK)
    # image bytes per fill / shard-writing partition: a task holds a few copies of its images (the
    # join, the tar), so this bounds its memory whatever the table size
    bytes_per_partition: int = 256 << 20
    user_agent_token: str = "mm1data"
    disallowed_header_directives: tuple[str, ...] = DISALLOWED_HEADER_DIRECTIVES
    robots_txt: bool = False
    dns_servers: tuple[str, ...] = ()
    dns_timeout_s: float = 5.0
    allow_networks: tuple[str, ...] = ()  # CIDRs; when set, connect to nothing else ("blocked_address")
    retry_failed: bool = False  # refetch URLs whose checkpointed result is a retryable failure
    top_hosts: int = 20  # hosts listed in stats.json

    def __post_init__(self) -> None:
        if self.hash_type not in ("sha256", "md5"):
            raise UsageError(f"download.hash_type must be sha256 or md5, got {self.hash_type!r}")
        positive = ("timeout_s", "connect_timeout_s", "dns_timeout_s", "concurrency", "per_host", "task_cpus")
        sizes = ("urls_per_task", "checkpoint_rows", "rows_per_partition", "bytes_per_partition", "max_bytes")
        for name in (*positive, *sizes):
            if getattr(self, name) <= 0:
                raise UsageError(f"download.{name} must be > 0")
        if self.retries < 0 or self.max_redirects < 0:
            raise UsageError("download.retries and download.max_redirects must be >= 0")
        for net in self.allow_networks:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError as e:
                raise UsageError(f"download.allow_networks: {e}") from e
        if not self.user_agent_token or any(c in self.user_agent_token for c in ":;,()\r\n"):
            raise UsageError(f"download.user_agent_token must be one plain token: {self.user_agent_token!r}")


DOWNLOAD_RUN_ONLY = (
    "concurrency",
    "per_host",
    "urls_per_task",
    "task_cpus",
    "checkpoint_rows",
    "checkpoint_s",
    "rows_per_partition",
    "bytes_per_partition",
    "dns_servers",
    "dns_timeout_s",
    "top_hosts",
)
"""Download settings that change how fetching runs, never which results it keeps (left out of
the download phase's fingerprint, so changing them does not redo later phases)."""


@dataclass(frozen=True)
class IngestConfig:
    """Limits applied while reading raw records. ``download`` is set by the jobs from the
    recipe's ``download:`` section when it is enabled (see :func:`reader_config`): readers then
    leave URL-only images pending instead of rejecting them."""

    max_image_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 89_478_485  # Pillow's own decompression-bomb threshold
    max_text_chars: int = 1_000_000  # a caption or text item longer than this is rejected
    max_caption_chars: int = 4_096
    # an HTML page (WARC record) larger than this is rejected `page_too_large`; Common Crawl
    # already truncates payloads at 1 MiB (WARC-Truncated: length)
    max_html_bytes: int = 5 * 1024 * 1024
    rows_per_batch: int = 256
    download: DownloadConfig | None = None


@dataclass(frozen=True)
class RayConfig:
    """Where to run: ``address`` None starts a local Ray sized to the machine."""

    address: str | None = None
    num_cpus: int | None = None


@dataclass(frozen=True)
class GopherQualityConfig:
    """Gopher quality rules (Rae et al. 2021, MassiveText, App. A.1.1); defaults as there and as
    datatrove's ``GopherQualityFilter``. A threshold set to null disables its rule."""

    enabled: bool = True
    min_doc_words: int | None = 50  # non-symbol words
    max_doc_words: int | None = 100_000
    min_avg_word_length: float | None = 3.0
    max_avg_word_length: float | None = 10.0
    max_symbol_word_ratio: float | None = 0.1  # "#" and "..." / "…" per word
    max_bullet_lines_ratio: float | None = 0.9
    max_ellipsis_lines_ratio: float | None = 0.3
    min_alpha_words_ratio: float | None = 0.8  # words with at least one alphabetic character
    min_stop_words: int | None = 2
    stop_words: tuple[str, ...] = ("the", "be", "to", "of", "and", "that", "have", "with")


@dataclass(frozen=True)
class GopherRepetitionConfig:
    """Gopher repetition rules (Rae et al. 2021, Table A1); defaults as there and as datatrove's
    ``GopherRepetitionFilter``. Fractions are of the document's characters unless named ``_frac``
    of lines/paragraphs. A threshold set to null disables its rule."""

    enabled: bool = True
    max_dup_para_frac: float | None = 0.30
    max_dup_para_char_frac: float | None = 0.20
    max_dup_line_frac: float | None = 0.30
    max_dup_line_char_frac: float | None = 0.20
    max_top_ngram_char_frac: tuple[float, ...] = (0.20, 0.18, 0.16)  # n = 2, 3, 4
    max_dup_ngram_char_frac: tuple[float, ...] = (0.15, 0.14, 0.13, 0.12, 0.11, 0.10)  # n = 5 .. 10


@dataclass(frozen=True)
class C4Config:
    """C4 heuristics (Raffel et al. 2020, Sec. 2.2, and tfds ``c4_utils``); defaults as datatrove's
    ``C4QualityFilter``. Lines without terminal punctuation, with fewer than ``min_words_per_line``
    words, a word over ``max_word_length``, "javascript" or a policy phrase are not counted; a doc
    is dropped for "lorem ipsum", a curly bracket, or fewer than ``min_sentences`` sentences in the
    lines that remain. ``remove_lines`` also deletes those lines from kept text docs (C4 and
    datatrove do); by default the text is left whole and only whole docs are dropped."""

    enabled: bool = True
    min_sentences: int = 5
    min_words_per_line: int = 3
    max_word_length: int = 1000
    terminal_punct: bool = True
    javascript: bool = True
    lorem_ipsum: bool = True
    curly_bracket: bool = True
    policy: bool = True
    remove_citations: bool = True
    remove_lines: bool = False


@dataclass(frozen=True)
class LanguageConfig:
    """fastText lid.176 language ID. ``min_score`` 0.65 as FineWeb / datatrove ``LanguageFilter``;
    English only by default (MM1 trains on English). Empty ``languages`` keeps every language."""

    enabled: bool = True
    languages: tuple[str, ...] = ("en",)
    min_score: float = 0.65


@dataclass(frozen=True)
class CaptionConfig:
    """Per-caption rules; a pair is dropped only when none of its captions is left.

    ``min_words`` 2 as DataComp's basic filtering (Gadre et al. 2023); ``max_words`` and the
    alt-text boilerplate patterns are mm1data's; ``max_repeats``: a caption (normalized) written
    for more than this many distinct images is boilerplate (same rule as OBELICS' image URLs)."""

    enabled: bool = True
    min_words: int = 2
    max_words: int = 128
    boilerplate: bool = True
    # lid.176 is unsure on short captions: at 0.5, 11 of 395 English COCO val captions fell
    # below; at 0.3, none
    language: LanguageConfig = field(default_factory=lambda: LanguageConfig(min_score=0.3))
    max_repeats: int | None = 10


@dataclass(frozen=True)
class ImageConfig:
    """Image checks for caption images and images inside interleaved docs. Min side 150 px and max
    side 20,000 px as OBELICS (Laurençon et al. 2023; ``original_*_cutoff`` in huggingface/OBELICS
    ``obelics/configs/config_filter_web_documents.yaml``); aspect ratio at most 3 as DataComp's
    basic filtering (Gadre et al. 2023; mlfoundations/datacomp ``baselines/utils.py``: ``aspect_ratio
    <= 3.0``). Images inside web documents use OBELICS's own ratio, 2
    (:attr:`InterleavedConfig.max_image_aspect_ratio`). ``max_pixels`` is Pillow's
    decompression-bomb threshold."""

    enabled: bool = True
    formats: tuple[str, ...] = ("jpeg", "png", "webp")  # OBELICS valid_formats: jpg, jpeg, png, webp
    min_side: int = 150
    max_side: int = 20_000
    max_aspect_ratio: float = 3.0
    max_pixels: int = 89_478_485
    decode: bool = True  # fully decode (catches truncated files), not just read the header


@dataclass(frozen=True)
class InterleavedConfig:
    """Doc-level rules for interleaved docs, after bad images and paragraphs are removed, and the
    rules for the images inside them. Defaults as OBELICS (huggingface/OBELICS
    ``obelics/configs/config_filter_web_documents.yaml``): 1-30 images, 10-2,000 words (words as
    OBELICS counts them: whitespace-separated, stripped of digits and punctuation), images at most
    2:1, rendered (``<img width/height>``) sides 150-20,000 px. Image URLs used by more than
    ``max_image_url_repeats`` docs are dropped (OBELICS: 10). A null threshold disables its rule."""

    min_images: int = 1  # number_images_min_cutoff
    max_images: int = 30  # number_images_max_cutoff
    min_text_words: int = 10  # number_words_doc_level_min_cutoff
    max_text_words: int | None = 2_000  # number_words_doc_level_max_cutoff
    max_image_aspect_ratio: float | None = 2.0  # aspect_ratio_max_cutoff (both ways: 1/2 to 2)
    min_rendered_side: int | None = 150  # rendered_{width,height}_min_cutoff
    max_rendered_side: int | None = 20_000  # rendered_{width,height}_max_cutoff
    max_image_url_repeats: int | None = 10


@dataclass(frozen=True)
class ParagraphConfig:
    """OBELICS node-level text rules, applied to every paragraph (text split on blank lines) of an
    interleaved doc; a failing paragraph leaves the doc, not the doc itself. Defaults as
    huggingface/OBELICS ``obelics/configs/config_filter_web_documents.yaml`` (``*_node_level``
    keys, named beside each field). Not ported: the flagged-word and common-word ratios (their word
    lists are not in the OBELICS repository), node-level language ID and perplexity (off there).
    The stop-word list is mm1data's own English function-word list. A null threshold disables
    its rule."""

    enabled: bool = True
    min_words: int | None = 4  # number_words_node_level_min_cutoff
    max_words: int | None = 1_000  # number_words_node_level_max_cutoff
    char_repetition_length: int = 10  # character_repetition_length_node_level
    max_char_repetition: float | None = 0.1  # character_repetition_node_level_max_cutoff
    word_repetition_length: int = 5  # word_repetition_length_node_level
    max_word_repetition: float | None = 0.1  # word_repetition_node_level_max_cutoff
    max_special_chars: float | None = 0.3  # special_character_ratio_node_level_max_cutoff
    min_stop_words: float | None = 0.3  # stopword_ratio_node_level_min_cutoff
    min_punctuation: float | None = 0.001  # punctuation_ratio_node_level_min_cutoff
    min_words_for_punctuation: int = 12  # min_number_words_to_check_punctuation_ratio_node_level


@dataclass(frozen=True)
class WebDocumentConfig:
    """OBELICS document-level text rules on an interleaved doc's whole text (its text items joined
    by blank lines), after the paragraph rules. Defaults as huggingface/OBELICS
    ``obelics/configs/config_filter_web_documents.yaml`` (``*_doc_level`` keys). The image and
    word counts are :class:`InterleavedConfig`'s; ``min_language_score`` raises the language
    filter's threshold for interleaved docs (lang_id_doc_level_min_cutoff 0.8, English). Not ported:
    flagged and common words (no published lists), perplexity (needs OBELICS's KenLM model)."""

    enabled: bool = True
    char_repetition_length: int = 10  # character_repetition_length_doc_level
    max_char_repetition: float | None = 0.1  # character_repetition_doc_level_max_cutoff
    word_repetition_length: int = 5  # word_repetition_length_doc_level
    max_word_repetition: float | None = 0.2  # word_repetition_doc_level_max_cutoff
    max_special_chars: float | None = 0.275  # special_character_ratio_doc_level_max_cutoff
    min_stop_words: float | None = 0.35  # stopword_ratio_doc_level_min_cutoff
    min_punctuation: float | None = 0.03  # punctuation_ratio_doc_level_min_cutoff
    min_language_score: float | None = 0.8  # lang_id_doc_level_min_cutoff


@dataclass(frozen=True)
class FilterConfig:
    """All filter families; the text families also apply to the text of interleaved docs."""

    gopher_quality: GopherQualityConfig = field(default_factory=GopherQualityConfig)
    gopher_repetition: GopherRepetitionConfig = field(default_factory=GopherRepetitionConfig)
    c4: C4Config = field(default_factory=C4Config)
    language: LanguageConfig = field(default_factory=LanguageConfig)
    caption: CaptionConfig = field(default_factory=CaptionConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    interleaved: InterleavedConfig = field(default_factory=InterleavedConfig)
    paragraph: ParagraphConfig = field(default_factory=ParagraphConfig)
    web_document: WebDocumentConfig = field(default_factory=WebDocumentConfig)


@dataclass(frozen=True)
class DedupConfig:
    """Exact and near-duplicate removal across all streams, and optional decontamination.

    MinHash: word ``ngram`` shingles (5, as datatrove and FineWeb), ``num_perm`` = ``bands`` ×
    ``rows`` values. 32 bands of 4 rows make a candidate S-curve with its midpoint near Jaccard
    0.45, so pairs at 0.8 are almost always candidates; a candidate then merges only when its
    estimated Jaccard (share of equal signature values) is at least ``threshold``. Simulated with
    ideal hashes, detection is 99.6 % at Jaccard 0.8, 90 % at 0.75, 51 % at 0.7 and 1 % at 0.6.
    Images: a 64-bit perceptual hash (``phash`` or ``dhash``) within ``hamming_radius`` bits; 8
    finds 97 % of COCO images re-encoded at JPEG q40, resized to 80 % and cropped 2 % per side,
    while the 159 distinct COCO images are all at least 14 bits apart.
    Survivor rule (``survivor``): ``quality`` = highest ``quality_score``, then caption before
    interleaved before text, then smallest id. Decontamination drops text docs containing at least
    ``decontaminate_threshold`` of an eval text's shingles, and images within the radius of an
    eval image (paths: ``.txt`` = one eval text per line, ``.jsonl[.gz]`` with a ``text`` field;
    image files or folders)."""

    exact_text: bool = True
    exact_image: bool = True
    minhash: bool = True
    image_hash: bool = True
    ngram: int = 5
    num_perm: int = 128
    bands: int = 32
    rows: int = 4
    threshold: float = 0.7
    seed: int = 1
    image_hash_kind: str = "phash"
    hamming_radius: int = 8
    survivor: str = "quality"
    decontaminate_texts: tuple[str, ...] = ()
    decontaminate_images: tuple[str, ...] = ()
    decontaminate_threshold: float = 0.8

    def __post_init__(self) -> None:
        if self.bands * self.rows != self.num_perm:
            raise UsageError(
                f"dedup: bands × rows ({self.bands} × {self.rows}) must equal num_perm {self.num_perm}"
            )
        if not 1 <= self.ngram <= 32:
            raise UsageError(f"dedup.ngram must be in 1..32, got {self.ngram}")
        if self.image_hash_kind not in ("phash", "dhash"):
            raise UsageError(f"dedup.image_hash_kind must be phash or dhash, got {self.image_hash_kind!r}")
        if not 0 <= self.hamming_radius <= 31:
            raise UsageError(f"dedup.hamming_radius must be in 0..31, got {self.hamming_radius}")
        if self.survivor != "quality":
            raise UsageError(f"dedup.survivor: only 'quality' is defined, got {self.survivor!r}")
        for name in ("threshold", "decontaminate_threshold"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise UsageError(f"dedup.{name} must be in (0, 1]")


@dataclass(frozen=True)
class TrainConfig:
    """``mm1data train``: data, model preset (+ field overrides), optimisation, parallelism, checkpoints."""

    data: str | None = None  # packed dataset folder or s3:// prefix
    model: str = "tiny"  # preset: tiny, mm1-100m, mm1-1b, mm1-3b
    model_overrides: dict[str, Any] = field(default_factory=dict)  # any ModelConfig field
    vision_weights: str | None = None  # local CLIP/OpenCLIP ViT weights (.safetensors or state dict)
    freeze_vision: bool = False
    steps: int = 100
    batch_size: int = 8  # global, in packed sequences per step
    micro_batch_size: int = 0  # per rank; 0 = batch_size / world size (no accumulation)
    lr: float | None = None  # None: MM1's fit exp(-0.4214 ln N - 0.5535), N = LM parameters
    warmup_steps: int = 2000  # capped at steps // 10 for short runs
    min_lr_ratio: float = 0.1  # cosine decays to this fraction of the peak
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    z_loss: float = 0.0  # MM1-30B used 1e-4
    seed: int = 0
    compile: bool = False
    fsdp: bool = False
    ckpt_dir: str | None = None
    ckpt_every: int = 0  # 0: only at the end of the run
    resume: bool = False
    stop_after: int | None = None  # leave after this many steps (the schedule still spans `steps`)
    log_every: int = 1  # JSON line on stdout
    print_every: int = 10  # human line on stderr
    num_workers: int = 2  # DataLoader processes per rank (JPEG decode)
    prefetch: int = 4  # micro-batches each worker keeps ready
    peak_tflops: float | None = None  # per device, for MFU; None: known GPUs only


@dataclass(frozen=True)
class BuildConfig:
    """``mm1data build``: tokenize, pack and mix into ``mm1data/packed-v1`` shards.

    Defaults are MM1's final recipe (McKinzie et al. 2024, Sec. 3.4 and 5): 4096-token sequences,
    144 tokens per image at 378×378, at most 16 images per sequence, 45:45:10 caption :
    interleaved : text by tokens. ``tokenizer`` None is the bundled GPT-2 ``tokenizer.json``.
    ``mix``: ``45:45:10`` (caption:interleaved:text) or ``caption=40,synthetic_caption=5,...``;
    ``mix_unit``: ``tokens`` (text + image-slot tokens, no padding), ``examples`` or ``sequences``
    (which packs per stream). ``synthetic_ratio``: share of caption pairs with a synthetic caption
    that use it (None: the mix's synthetic_caption share of all captions, 0 if it names none).
    ``shard_size``: sequences per shard; ``shard_bytes`` (if set) also caps a shard's
    estimated size. ``pack_window``: examples per best-fit-decreasing window (0: a whole shard)."""

    seq_len: int = 4096
    image_tokens: int = 144
    max_images: int = 16
    image_size: int = 378
    image_markers: bool = True  # <image_start> ... <image_end> around each slot (loss 0 on them)
    jpeg_quality: int = 90
    tokenizer: str | None = None
    mix: str = "45:45:10"
    mix_unit: str = "tokens"
    upsample: bool = False
    seed: int = 0
    pack_mode: str = "mixed"
    shard_size: int = 1000
    shard_bytes: int | None = None
    pack_window: int = 0
    synthetic_ratio: float | None = None
    workers: int | None = None  # Ray workers for tokenize and write (None: the CPUs Ray has)
    plan_partitions: int | None = None  # None: one per ~100k examples (pack/phase.py)

    def __post_init__(self) -> None:
        slot = self.image_tokens + (2 if self.image_markers else 0)
        if self.seq_len < 8 or self.image_tokens < 1 or self.max_images < 1:
            raise UsageError("build: seq_len >= 8, image_tokens >= 1 and max_images >= 1 are required")
        if slot + 2 > self.seq_len:
            raise UsageError(f"build: an image slot ({slot} tokens) does not fit seq_len {self.seq_len}")
        if self.mix_unit not in ("tokens", "examples", "sequences"):
            raise UsageError(f"build.mix_unit must be tokens, examples or sequences, got {self.mix_unit!r}")
        if self.pack_mode not in ("mixed", "per-stream"):
            raise UsageError(f"build.pack_mode must be mixed or per-stream, got {self.pack_mode!r}")
        if self.shard_size < 1 or self.image_size < 8 or not 1 <= self.jpeg_quality <= 100:
            raise UsageError("build: shard_size >= 1, image_size >= 8, jpeg_quality in 1..100 required")
        if self.synthetic_ratio is not None and not 0.0 <= self.synthetic_ratio <= 1.0:
            raise UsageError("build.synthetic_ratio must be in [0, 1]")
        if self.plan_partitions is not None and self.plan_partitions < 1:
            raise UsageError("build.plan_partitions must be >= 1")


@dataclass(frozen=True)
class SampleConfig:
    """A seeded record sample: a record is kept when a hash of ``(seed, stream, lineage, id)``
    falls below ``fraction`` (decided per record on the workers, so the same records are drawn
    whatever the files, blocks or workers; each record independently, as dedup estimates need)."""

    fraction: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise UsageError(f"sample fraction must be in (0, 1], got {self.fraction}")


@dataclass(frozen=True)
class PlanConfig:
    """``mm1data plan``: run the build's phases on a record sample and project the full build.

    ``sample``: fraction of the records (after ingest's own rejects) that go on through filter,
    dedup, tokenize and plan; ``budget_tokens`` / ``budget_sequences``: a target for the packed
    output (tokens as the mix counts them: text plus image-slot tokens); ``nodes`` ×
    ``cores_per_node`` (None: this machine's CPUs): the cluster the wall time is projected for;
    ``confidence``: of every interval."""

    sample: float = 0.1
    sample_seed: int = 0
    budget_tokens: float | None = None
    budget_sequences: float | None = None
    nodes: int = 1
    cores_per_node: int | None = None
    confidence: float = 0.95

    def __post_init__(self) -> None:
        SampleConfig(self.sample, self.sample_seed)
        if self.budget_tokens is not None and self.budget_sequences is not None:
            raise UsageError("plan: give --budget-tokens or --budget-sequences, not both")
        for name in ("budget_tokens", "budget_sequences"):
            if (getattr(self, name) or 1) <= 0:
                raise UsageError(f"plan.{name} must be > 0")
        if self.nodes < 1 or (self.cores_per_node is not None and self.cores_per_node < 1):
            raise UsageError("plan: nodes and cores_per_node must be >= 1")
        if not 0.5 <= self.confidence < 1.0:
            raise UsageError("plan.confidence must be in [0.5, 1)")


@dataclass(frozen=True)
class Recipe:
    """A whole job description, loaded from YAML (see ``pipelines/``)."""

    sources: Sources = field(default_factory=Sources)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    filters: FilterConfig = field(default_factory=FilterConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    build: BuildConfig = field(default_factory=BuildConfig)
    download: DownloadConfig = field(default_factory=DownloadConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)


def reader_config(recipe: Recipe) -> IngestConfig:
    """The config readers get: ``recipe.ingest`` with ``download`` set when downloading is on, holding
    only what readers read (columns and hash type; network settings stay out of the ingest
    phase's fingerprint)."""
    dl = recipe.download
    if not dl.enabled:
        return recipe.ingest
    columns = DownloadConfig(
        enabled=True,
        url_col=dl.url_col,
        caption_col=dl.caption_col,
        hash_col=dl.hash_col,
        hash_type=dl.hash_type,
    )
    return dataclasses.replace(recipe.ingest, download=columns)


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], where)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, str) and tp is SourceSpec:
            value = {"path": value}
        if not isinstance(value, dict):
            raise UsageError(f"{where}: expected a mapping, got {type(value).__name__}")
        return from_dict(tp, value, where)
    if origin is tuple:
        if value is None:
            return ()
        if not isinstance(value, (list, tuple)):
            value = [value]
        return tuple(_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise UsageError(f"{where}: expected a mapping, got {type(value).__name__}")
        return {str(k): _convert(v, args[1], f"{where}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise UsageError(f"{where}: expected {tp.__name__}, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: dict, where: str = "recipe") -> T:
    """Build dataclass ``cls`` from a plain dict, checking keys and types recursively."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise UsageError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(names))})")
    kwargs = {k: _convert(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise UsageError(f"{where}: {e}") from e


def _resolve_paths(sources: Sources, base: Path) -> Sources:
    def fix(spec: SourceSpec) -> SourceSpec:
        def abs_(p: str | None) -> str | None:
            if p is None or "://" in p or Path(p).is_absolute():
                return p
            return str((base / p).resolve())

        return dataclasses.replace(spec, path=abs_(spec.path), images=abs_(spec.images))

    return Sources(
        **{f.name: tuple(fix(s) for s in getattr(sources, f.name)) for f in dataclasses.fields(Sources)}
    )


def load_recipe(path: str | Path) -> Recipe:
    """Load a YAML recipe into a :class:`Recipe`; relative source paths resolve beside the file."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"recipe not found: {path}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise UsageError(f"recipe {path} is not valid YAML: {str(e).splitlines()[0]}") from e
    if not isinstance(data, dict):
        raise UsageError(f"recipe {path} must be a mapping at the top level")
    recipe = from_dict(Recipe, data, where=p.name)
    return dataclasses.replace(recipe, sources=_resolve_paths(recipe.sources, p.parent))


def to_dict(obj: Any) -> Any:
    """A config object as plain JSON-able data (for manifests and stats)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj
