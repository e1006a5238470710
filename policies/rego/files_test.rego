package mandate.workflows.files_test

import rego.v1

import data.mandate.workflows.files

call(tool, params, level) := {
	"proposal": {
		"workflow": "files",
		"action_type": tool,
		"case_type": null,
		"resource": "/srv/notes",
		"params": params,
		"context": {},
		"confidence": null,
	},
	"autonomy": {"level": level},
}

test_listing_a_directory_is_neither_denied_nor_held if {
	count(files.deny) == 0 with input as call("list_directory", {"path": "/srv/notes"}, 3)
	count(files.hold) == 0 with input as call("list_directory", {"path": "/srv/notes"}, 3)
}

test_a_dot_dot_segment_is_denied_in_any_path_argument if {
	some reason in files.deny with input as call("read_text_file", {"path": "/srv/notes/../../etc/passwd"}, 3)
	reason.code == "path_traversal"
	count(files.deny) == 1 with input as call("move_file", {"source": "/srv/a", "destination": "/srv/../b"}, 3)
	count(files.deny) == 1 with input as call("read_multiple_files", {"paths": ["/srv/a", "/srv/x/../y"]}, 3)
	count(files.deny) == 0 with input as call("read_text_file", {"path": "/srv/notes/a..b.txt"}, 3)
}

test_writing_a_hidden_file_is_held if {
	some reason in files.hold with input as call("write_file", {"path": "/srv/.ssh/authorized_keys", "content": "x"}, 2)
	reason.code == "hidden_path"
	count(files.hold) == 0 with input as call("read_text_file", {"path": "/srv/.bashrc"}, 2)
	count(files.hold) == 0 with input as call("write_file", {"path": "/srv/./notes.txt", "content": "x"}, 2)
}

test_a_large_write_is_held if {
	big := call("write_file", {"path": "/srv/big.txt", "content": "xyz"}, 2)
	some reason in files.hold with input as big with data.workflows.files.write_review_chars as 2
	reason.code == "large_write"
	count(files.hold) == 0 with input as big with data.workflows.files.write_review_chars as 3
}

test_an_edit_is_a_write_and_its_dry_run_a_read if {
	files.case_type == "files.write" with input as call("edit_file", {"path": "/srv/a", "edits": []}, 1)
	files.case_type == "files.read" with input as call("edit_file", {"path": "/srv/a", "edits": [], "dryRun": true}, 1)
	not files.case_type with input as call("write_file", {"path": "/srv/a", "content": ""}, 1)
}
