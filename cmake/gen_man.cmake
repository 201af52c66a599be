# Writes a man page from a program's --help and --version (run at build time):
#   cmake -DPROG=path -DNAME=gf -DOUT=gf.1 -DSECTION=1 -P gen_man.cmake
# The help text goes in as it is printed (no fill), so the page reads like --help.
execute_process(COMMAND ${PROG} --help OUTPUT_VARIABLE help RESULT_VARIABLE rc_help
                ERROR_VARIABLE ignored)
execute_process(COMMAND ${PROG} --version OUTPUT_VARIABLE version RESULT_VARIABLE rc_version
                ERROR_VARIABLE ignored)
if(NOT rc_help EQUAL 0 OR NOT rc_version EQUAL 0)
  message(FATAL_ERROR "${NAME}: --help exited ${rc_help}, --version ${rc_version}")
endif()
string(STRIP "${version}" version)
string(REGEX MATCH "[0-9]+\\.[0-9]+\\.[0-9]+" number "${version}")
# roff: backslashes doubled, and a line starting with . or ' protected
string(REPLACE "\\" "\\\\" help "${help}")
string(REGEX REPLACE "(^|\n)([.'])" "\\1\\\\&\\2" help "${help}")
string(TOUPPER "${NAME}" upper)
file(WRITE ${OUT} ".TH ${upper} ${SECTION} \"\" \"goldfinch ${number}\" \"GoldFinch\"
.SH NAME
${NAME} \\- ${DESC}
.SH DESCRIPTION
.nf
${help}.fi
.SH VERSION
${version}
.SH SEE ALSO
goldfinchd(1), gf(1), gf-cache(1), gf-run(1)
")
