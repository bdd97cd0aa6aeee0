fn main() {
    println!("hello from a wasi:cli/command");
}
