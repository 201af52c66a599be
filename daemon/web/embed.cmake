# Turns a file into a C array at build time (cmake -P, no xxd needed):
#   cmake -DINPUT=index.html -DOUTPUT=web_index.c -DSYMBOL=gfd_web_index -P embed.cmake
# gives `const unsigned char SYMBOL[]` (the bytes and a NUL) and `const size_t SYMBOL_len`.
file(READ "${INPUT}" hex HEX)
string(LENGTH "${hex}" n)
math(EXPR len "${n} / 2")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
# Lines of 16 bytes keep the generated file readable in an editor.
string(REGEX REPLACE "((0x[0-9a-f][0-9a-f],){16})" "\\1\n" bytes "${bytes}")
file(WRITE "${OUTPUT}.tmp"
  "/* Generated from ${INPUT} by daemon/web/embed.cmake: do not edit. */\n"
  "#include <stddef.h>\n"
  "const unsigned char ${SYMBOL}[] = {\n${bytes}0x00\n};\n"
  "const size_t ${SYMBOL}_len = ${len};\n")
# Replace only on change, so that an unchanged page rebuilds nothing.
file(COPY_FILE "${OUTPUT}.tmp" "${OUTPUT}" ONLY_IF_DIFFERENT)
file(REMOVE "${OUTPUT}.tmp")
