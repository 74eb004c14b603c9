"""ExpandSearch under verl: our episode driver as a verl agent loop (``rollout.agent.agent_loop_config_path``).

- :mod:`.agent_loop` — ``ExpandSearchAgentLoop``, the ``AgentLoopBase`` verl instantiates per trajectory; it plays
  the episode with :func:`agent_env.episode.run_episode`, so verl and the embedded trainer share one episode loop.
- :mod:`.engine` — ``ServerManagerEngine``, verl's ``server_manager.generate`` behind our ``LLMEngine`` protocol.
- :mod:`.output` — a finished :class:`~agent_env.episode.Trajectory` as an ``AgentLoopOutput`` that verl's padding,
  reward placement and metric collection cannot corrupt (truncated to the budgets, ending on a policy token, the
  same ``reward_extra_info`` keys on every sample).
- :mod:`.engine_server` — the other direction: any ``LLMEngine`` served with verl's ``generate`` signature, so the
  plugin (and verl's own ``AgentLoopWorker``) runs on CPU against the transformers engine or a scripted policy.
- :mod:`.settings` — the agent loop's own settings (retriever, squeezer, episode rules), carried to every worker
  in verl's free slot ``actor_rollout_ref.rollout.custom.expandsearch``.
- :mod:`.launch` — ``expandsearch train --backend verl``: our ``TrainConfig`` as Hydra overrides of verl's
  ``ppo_trainer``, composed and validated against verl's own config, then run here or with ``ray job submit``.

verl is imported only here; ``train_configs/verl/agent_loops.yaml`` registers the loop.
"""
