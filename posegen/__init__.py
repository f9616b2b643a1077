"""posegen: head poses and expressions of speakers and listeners from speech (causal TCNs).

tcn (the network and its streaming runner), data (conversations, normalization, network
inputs), model (the two stochastic networks, sampling), train, metrics, evaluate (baselines
and the metric table), synthetic (dyads with a planted reaction law), plots.
"""
