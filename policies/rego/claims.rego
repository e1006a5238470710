# Insurance claims: straightforward claims are approved and paid without a person; large,
# uncertain or unusual ones go to an adjuster with the system's recommendation.
package mandate.workflows.claims

import rego.v1

cfg := data.workflows.claims

amount := to_number(input.proposal.params.amount)

deny contains {
	"code": "over_hard_limit",
	"message": sprintf("claim of %v is over the hard limit of %v", [input.proposal.params.amount, cfg.hard_limit]),
} if {
	amount > to_number(cfg.hard_limit)
}

deny contains {
	"code": "under_minimum",
	"message": sprintf("claim of %v is under the minimum of %v", [input.proposal.params.amount, cfg.minimum]),
} if {
	amount < to_number(cfg.minimum)
}

deny contains {
	"code": "missing_amount",
	"message": "a claim needs params.amount (a decimal string such as \"800.00\")",
} if {
	not input.proposal.params.amount
}

# Level 3 (conditional): high value escalates.
hold contains {
	"code": "high_value",
	"message": sprintf("claim of %v is over the review threshold of %v", [input.proposal.params.amount, cfg.review_over]),
} if {
	amount > to_number(cfg.review_over)
	amount <= to_number(cfg.hard_limit)
	input.autonomy.level < 4
}

# Level 4 (full): routine exceptions run alone; only what needs judgment is held.
hold contains {
	"code": "needs_judgment",
	"message": sprintf("claim of %v is over the judgment threshold of %v", [input.proposal.params.amount, cfg.judgment_over]),
} if {
	amount > to_number(cfg.judgment_over)
	amount <= to_number(cfg.hard_limit)
	input.autonomy.level >= 4
}

hold contains {
	"code": "low_confidence",
	"message": sprintf("confidence is below the floor of %v", [cfg.confidence_floor]),
} if {
	is_number(input.proposal.confidence)
	input.proposal.confidence < to_number(cfg.confidence_floor)
}

hold contains {
	"code": "no_confidence",
	"message": "the executor gave no confidence",
} if {
	input.proposal.confidence == null
}

hold contains {
	"code": "litigation_risk",
	"message": "the claim mentions litigation; an adjuster decides",
} if {
	input.proposal.context.litigation == true
}

# Level 3 (conditional) and below: a novel pattern escalates. A claim on a resource never seen
# before, above what this case type usually pays (the 95th percentile of its executed amounts),
# once there is enough history to say what is usual (input.history).
hold contains {
	"code": "novel_pattern",
	"message": sprintf("claim of %v on a resource never seen before is above the usual %v (95th percentile of executed claims)", [input.proposal.params.amount, input.history.amounts.p95]),
} if {
	input.autonomy.level < 4
	input.history.first_resource
	input.history.amounts.count >= cfg.novelty_min_history
	amount > to_number(input.history.amounts.p95)
}
