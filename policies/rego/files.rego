# Files through the reference MCP filesystem server (npm @modelcontextprotocol/server-filesystem)
# behind `mandate mcp proxy`: every tool call is a proposal whose action type is the tool's name
# and whose params are its arguments. Reading runs alone (files.read starts at level 3); writing
# waits for a person (files.write starts at level 1, advisory). The server keeps to its allowed
# directories itself; these rules say what needs a person even when a level lets writes run.
package mandate.workflows.files

import rego.v1

cfg := data.workflows.files

# Every path a call names: path, source, destination, and each of paths.
paths contains path if {
	some name in ["path", "source", "destination"]
	path := input.proposal.params[name]
	is_string(path)
}

paths contains path if {
	some path in input.proposal.params.paths
	is_string(path)
}

# A dry run of edit_file only shows the diff it would make: it reads.
dry_run := true if {
	input.proposal.action_type == "edit_file"
	input.proposal.params.dryRun == true
}

case_type := "files.read" if dry_run

case_type := "files.write" if {
	input.proposal.action_type == "edit_file"
	not dry_run
}

writes := true if {
	input.proposal.action_type in {"write_file", "edit_file", "create_directory", "move_file"}
	not dry_run
}

# The approver reads the path; a `..` in it says something else than where it lands.
deny contains {
	"code": "path_traversal",
	"message": sprintf("%v has a '..' segment; name the path it means", [path]),
} if {
	some path in paths
	".." in split(path, "/")
}

hold contains {
	"code": "hidden_path",
	"message": sprintf("writing %v (a hidden file or directory) needs a person at any level", [path]),
} if {
	writes
	some path in paths
	some segment in split(path, "/")
	startswith(segment, ".")
	not segment in {".", ".."}
}

hold contains {
	"code": "large_write",
	"message": sprintf("writing %v characters is over the review size of %v", [count(input.proposal.params.content), cfg.write_review_chars]),
} if {
	input.proposal.action_type == "write_file"
	count(input.proposal.params.content) > cfg.write_review_chars
}
