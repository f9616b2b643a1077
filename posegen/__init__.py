"""Head-pose and expression generation for speakers and listeners (causal TCN); built by the posegen issue."""
