// Nothing to build: the cdylib resolves Lua symbols from the host (nginx's
// lua module) at load time; the unit tests link LuaJIT themselves (see
// src/tests/mod.rs).
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
}
