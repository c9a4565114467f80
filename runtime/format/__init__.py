"""The artifact format: the one place the byte layout of ``NAME.bin`` lives.

docs/artifact-format.md is the specification; each module here holds one part:

    opcodes.py    opcode, effect and payload-key constants, the format's limits, module names
    program.py    the verified form: Rule, Program, location()
    header.py     the 56-byte header: build, read, digest, the envelope checks
    payload.py    payload bytes: pack, unpack whole, read in bounded windows
    arguments.py  argument instructions: what is valid for a parameter type, shared decoded form
    verify.py     structural verification and the incremental Linker (reference check)
    link_fast.py  the unrolled fast linker the Linker tries first
    encode.py     the encoder: rules -> caps, consts, code -> payload (compiler and tests)
    disasm.py     listings for people: rules, arguments, instructions
    reader.py     Artifact and read_artifact*, the reader the runtime loads with
    writer.py     pack_artifact and the atomic file writes

This package imports nothing at import time, so ``polc.runtime.patterns`` can
import ``format.opcodes`` without pulling in the verifier (which imports
``patterns``).
"""
