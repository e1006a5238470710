package mandate.workflows.parking_test

import rego.v1

import data.mandate.workflows.parking

booking(confidence, level) := {
	"proposal": {
		"workflow": "parking",
		"action_type": "booking.create",
		"case_type": "booking.create",
		"resource": "lot-7/space-42",
		"params": {"lot": "lot-7"},
		"context": {},
		"confidence": confidence,
	},
	"autonomy": {"level": level},
}

refund(amount) := {
	"proposal": {
		"workflow": "parking",
		"action_type": "refund.issue",
		"case_type": "refund.issue",
		"resource": "booking/B-1",
		"params": {"amount": amount},
		"context": {},
		"confidence": 0.99,
	},
	"autonomy": {"level": 1},
}

test_confident_booking_is_neither_denied_nor_held if {
	count(parking.deny) == 0 with input as booking(0.95, 3)
	count(parking.hold) == 0 with input as booking(0.95, 3)
}

test_unsure_booking_is_held if {
	some reason in parking.hold with input as booking(0.5, 3)
	reason.code == "low_confidence"
}

test_booking_without_confidence_is_held_below_level_4 if {
	count(parking.hold) == 1 with input as booking(null, 3)
	count(parking.hold) == 0 with input as booking(null, 4)
}

test_small_refund_is_allowed_by_policy if {
	count(parking.deny) == 0 with input as refund("20")
}

test_refund_over_hard_limit_is_denied if {
	some reason in parking.deny with input as refund("5000")
	reason.code == "over_hard_limit"
}

test_refund_under_minimum_is_denied if {
	some reason in parking.deny with input as refund("0.49")
	reason.code == "under_minimum"
	count(parking.deny) == 0 with input as refund("0.50")
}

test_refund_at_hard_limit_is_allowed if {
	count(parking.deny) == 0 with input as refund("1000.00")
}

test_a_first_of_its_kind_is_a_warning_not_a_hold if {
	b := json.patch(booking(0.95, 3), [
		{"op": "add", "path": "/history", "value": {"first_action_type": true}},
		{"op": "add", "path": "/executor", "value": {"name": "booking-agent-7"}},
	])
	{r.code | some r in parking.warn} == {"first_of_its_kind"} with input as b
	count(parking.hold) == 0 with input as b
	count(parking.warn) == 0 with input as booking(0.95, 3)
}
