"""Names the tokenizer's modules share: the control pieces, Meta's infilling stand-in, and a saved folder's files."""

# CodeLlamaConfig field -> the piece Meta's tokenizer.py looks the id up by.
CONTROL_PIECES = {"prefix_token_id": "▁<PRE>", "suffix_token_id": "▁<SUF>", "middle_token_id": "▁<MID>",
                  "eot_token_id": "▁<EOT>", "step_token_id": "<step>"}
SMILEY = "☺"  # Meta's stand-in for "no dummy prefix here" in encode_infilling / decode_infilling

# files.py says why the pipeline is not kept in tokenizer.json.
OWN_FILE = "codellama_tokenizer.json"
GUARD_FILE = "tokenizer.json"
