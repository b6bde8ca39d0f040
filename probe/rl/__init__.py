"""Phase 2: GRPO on mixed teacher/student groups (R5): config, loss, arms, rollouts, trainer."""
