# Parking operations (the seed's example): bookings, modifications, refunds, shuttle dispatch.
#
# Contract with the gateway: `deny` and `hold` are sets of {code, message}. Any deny rejects;
# any hold holds for approval; neither executes. The gateway itself holds everything at
# autonomy level 1, whatever this says.
package mandate.workflows.parking

import rego.v1

cfg := data.workflows.parking

amount := to_number(input.proposal.params.amount)

deny contains {
	"code": "over_hard_limit",
	"message": sprintf("refund of %v is over the hard limit of %v", [input.proposal.params.amount, cfg.refund_hard_limit]),
} if {
	input.proposal.action_type == "refund.issue"
	amount > to_number(cfg.refund_hard_limit)
}

deny contains {
	"code": "under_minimum",
	"message": sprintf("refund of %v is under the minimum of %v", [input.proposal.params.amount, cfg.refund_minimum]),
} if {
	input.proposal.action_type == "refund.issue"
	amount < to_number(cfg.refund_minimum)
}

deny contains {
	"code": "missing_amount",
	"message": "a refund needs params.amount (a decimal string such as \"20.00\")",
} if {
	input.proposal.action_type == "refund.issue"
	not input.proposal.params.amount
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
	"message": "the executor gave no confidence; at levels below 4 that needs a person",
} if {
	input.proposal.confidence == null
	input.autonomy.level < 4
}

# Level 2 (supervised): only case types proven at this level run alone; changes to an
# existing booking that move it to another lot need a person.
hold contains {
	"code": "lot_change",
	"message": "moving a booking to another lot needs a person below level 3",
} if {
	input.proposal.action_type == "booking.modify"
	input.proposal.params.lot != input.proposal.context.current_lot
	input.autonomy.level < 3
}

# Level 3 (conditional) and below: a novel pattern escalates. A refund on a resource never seen
# before, above what this case type usually pays out (the 95th percentile of its executed
# amounts), once there is enough history to say what is usual (input.history).
hold contains {
	"code": "novel_pattern",
	"message": sprintf("refund of %v on a resource never seen before is above the usual %v (95th percentile of executed refunds)", [input.proposal.params.amount, input.history.amounts.p95]),
} if {
	input.proposal.action_type == "refund.issue"
	input.autonomy.level < 4
	input.history.first_resource
	input.history.amounts.count >= cfg.novelty_min_history
	amount > to_number(input.history.amounts.p95)
}

# Advisory: an executor doing something for the first time is noted beside the verdict (and
# counted in the figures), never held for it.
warn contains {
	"code": "first_of_its_kind",
	"message": sprintf("%v proposes %v for the first time", [input.executor.name, input.proposal.action_type]),
} if {
	input.history.first_action_type
}
