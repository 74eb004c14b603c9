"""The search environment: action protocol and prompts, rewards, retrieval merging, and (later) squeezers,
LLM engines and the multi-turn episode driver. Submodules import heavy libraries only where they need them."""

AGENT_LOOP_NAME = "expandsearch_agent"
"""The name our verl agent loop is registered under; the ``agent_name`` column of our parquet files."""
