# Writes OUT (cm_revision.h) with cm's git revision in SRC; leaves the file untouched when the
# revision is unchanged, so that nothing recompiles.  cmake -DSRC=... -DOUT=... -P revision.cmake
set(revision "unknown")
find_package(Git QUIET)
if(GIT_FOUND AND EXISTS "${SRC}/.git")
  execute_process(COMMAND "${GIT_EXECUTABLE}" rev-parse --short=12 HEAD WORKING_DIRECTORY "${SRC}"
                  OUTPUT_VARIABLE head OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE rc
                  ERROR_QUIET)
  if(rc EQUAL 0 AND head)
    set(revision "${head}")
    execute_process(COMMAND "${GIT_EXECUTABLE}" status --porcelain --untracked-files=no
                    WORKING_DIRECTORY "${SRC}" OUTPUT_VARIABLE changes ERROR_QUIET)
    if(changes)
      set(revision "${revision}-dirty")
    endif()
  endif()
endif()
set(text "// Made by runner/revision.cmake at build time.\n#define CM_GIT_REVISION \"${revision}\"\n")
set(old "")
if(EXISTS "${OUT}")
  file(READ "${OUT}" old)
endif()
if(NOT old STREQUAL text)
  file(WRITE "${OUT}" "${text}")
endif()
