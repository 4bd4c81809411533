# Fails when a doctest TEST_CASE name holds a ';': CMake lists split on it, so
# doctest_discover_tests would register fragments of the name as tests that match no test case
# and pass without running anything.   cmake -DDIR=tests -P check_test_names.cmake
file(GLOB sources "${DIR}/test_*.cpp")
set(bad "")
foreach(src ${sources})
  file(READ "${src}" text)
  # a name is the string literal(s) after TEST_CASE(, possibly on the next line
  string(REGEX MATCHALL "TEST_CASE\\([ \t\r\n]*\"[^\"]*\"" names "${text}")
  foreach(n IN LISTS names)
    # MATCHALL's list already split names at ';': a fragment without the TEST_CASE( prefix or
    # without the closing quote marks one
    if(NOT n MATCHES "^TEST_CASE\\(" OR NOT n MATCHES "\"$")
      list(APPEND bad "${src}")
    endif()
  endforeach()
endforeach()
if(bad)
  list(REMOVE_DUPLICATES bad)
  message(FATAL_ERROR "TEST_CASE names with ';' (CTest would run none of them): ${bad}")
endif()
message(STATUS "no TEST_CASE name holds a ';'")
