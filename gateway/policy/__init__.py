"""Policy bundles and the two engines that judge a proposal: Casbin (who may) and Rego (whether)."""
