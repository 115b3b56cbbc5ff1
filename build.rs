// The cdylib resolves Lua symbols from the host (nginx's lua module) at load
// time. Test executables have no host: link them against LuaJIT itself.
fn main() {
    println!("cargo:rustc-link-arg-tests=-lluajit-5.1");
    println!("cargo:rerun-if-changed=build.rs");
}
