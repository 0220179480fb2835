"""Tamiyo's learned policy: a torch-geometric graph network over the run's model graph
(`gnn`), its features, action mask, network and artifact format. It pulls in torch and
torch-geometric, so nothing imports it until a learned policy is loaded. The heuristic
policy and what every policy shares (context, budget, decisions, safety) are the policy
core, `esper.policy`, which Tolaria's in-process policy uses too."""
