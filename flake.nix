{
  description = "Canopy: a peer-to-peer serverless cloud (WebAssembly functions deployed by git push)";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.05";
    # A Rust toolchain with the wasm32-wasip2 and musl targets (the dev shell
    # and the example function the VM test deploys).
    rust-overlay = {
      url = "github:oxalica/rust-overlay";
      inputs.nixpkgs.follows = "nixpkgs";
    };
  };

  outputs =
    {
      self,
      nixpkgs,
      rust-overlay,
    }:
    let
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f system (pkgsFor system));
      pkgsFor =
        system:
        import nixpkgs {
          inherit system;
          overlays = [ rust-overlay.overlays.default ];
        };
      # The workspace's rust-version (Cargo.toml) with the extra targets.
      toolchainFor =
        pkgs:
        pkgs.rust-bin.stable."1.95.0".default.override {
          extensions = [
            "rust-src"
            "rust-analyzer"
          ];
          targets = [
            "wasm32-wasip2"
            "x86_64-unknown-linux-musl"
          ];
        };
      cargoToml = builtins.fromTOML (builtins.readFile ./Cargo.toml);
    in
    {
      packages = forAllSystems (
        system: pkgs:
        let
          toolchain = toolchainFor pkgs;
          rustPlatform = pkgs.makeRustPlatform {
            cargo = toolchain;
            rustc = toolchain;
          };
        in
        {
          canopy = rustPlatform.buildRustPackage {
            pname = "canopy";
            inherit (cargoToml.workspace.package) version;
            src = pkgs.lib.cleanSourceWith {
              src = ./.;
              # The image, docs and Nix files do not change the binary.
              filter =
                path: type:
                let
                  rel = pkgs.lib.removePrefix (toString ./. + "/") (toString path);
                in
                !(pkgs.lib.hasPrefix "image" rel || pkgs.lib.hasSuffix ".nix" rel || rel == "flake.lock");
            };
            cargoLock.lockFile = ./Cargo.lock;
            cargoBuildFlags = [
              "-p"
              "canopy-node"
              "--bin"
              "canopy"
            ];
            # The node's own tests (unit and integration); the end-to-end
            # tests in tests/ need git, qemu and a wasm toolchain and run in CI
            # (.ci/run) and in checks.vm.
            cargoTestFlags = [
              "-p"
              "canopy-node"
            ];
            nativeCheckInputs = [ pkgs.git ];
            meta = {
              description = "Canopy node and CLI";
              license = pkgs.lib.licenses.asl20;
              mainProgram = "canopy";
            };
          };
          default = self.packages.${system}.canopy;

          # The example function (docs/examples/hello) as a wasi:http component.
          hello-wasm = pkgs.stdenv.mkDerivation {
            pname = "canopy-hello-wasm";
            version = "0.1.0";
            src = ./docs/examples/hello;
            cargoDeps = rustPlatform.importCargoLock {
              lockFile = ./docs/examples/hello/Cargo.lock;
            };
            nativeBuildInputs = [
              rustPlatform.cargoSetupHook
              toolchain
            ];
            buildPhase = ''
              runHook preBuild
              cargo build --release --offline --target wasm32-wasip2
              runHook postBuild
            '';
            installPhase = ''
              runHook preInstall
              install -Dm0644 target/wasm32-wasip2/release/hello.wasm $out/hello.wasm
              runHook postInstall
            '';
          };
        }
        // pkgs.lib.optionalAttrs (system == "x86_64-linux") {
          # The appliance's disk images (NixOS image builder).
          appliance-raw-efi = self.nixosConfigurations.appliance.config.system.build.images.raw-efi;
          appliance-qcow2 = self.nixosConfigurations.appliance.config.system.build.images.qemu-efi;
        }
      );

      apps = forAllSystems (
        system: pkgs:
        let
          dream = pkgs.writeShellApplication {
            name = "canopy-dream";
            runtimeInputs = [ pkgs.git ];
            text = ''exec ${self.packages.${system}.canopy}/bin/canopy dream "$@"'';
          };
        in
        {
          dream = {
            type = "app";
            program = "${dream}/bin/canopy-dream";
            meta.description = "Start `canopy dream`: a whole local cloud";
          };
          default = self.apps.${system}.dream;
        }
      );

      nixosModules.canopy = import ./image/module.nix self;
      nixosModules.default = self.nixosModules.canopy;

      nixosConfigurations.appliance = nixpkgs.lib.nixosSystem {
        system = "x86_64-linux";
        modules = [ (import ./image/appliance.nix self) ];
      };

      checks = forAllSystems (
        system: pkgs:
        {
          # Builds the binary and runs the node's tests (doCheck).
          canopy = self.packages.${system}.canopy;
        }
        // pkgs.lib.optionalAttrs (system == "x86_64-linux") {
          appliance = self.nixosConfigurations.appliance.config.system.build.toplevel;
          vm = pkgs.testers.runNixOSTest (
            import ./image/vm-test.nix {
              inherit self;
              hello = self.packages.${system}.hello-wasm;
            }
          );
          # Three appliance VMs form a cluster (image/cluster-test.nix).
          cluster = pkgs.testers.runNixOSTest (
            import ./image/cluster-test.nix {
              inherit self;
              hello = self.packages.${system}.hello-wasm;
            }
          );
        }
      );

      devShells = forAllSystems (
        system: pkgs: {
          default = pkgs.mkShell {
            packages = [
              (toolchainFor pkgs)
              pkgs.git
              pkgs.jq
              pkgs.curl
              pkgs.musl
              pkgs.qemu
              pkgs.cpio
              pkgs.zstd
              pkgs.e2fsprogs
            ];
            # image/build puts this busybox in the initramfs (static, not on PATH).
            CANOPY_BUSYBOX = "${pkgs.pkgsStatic.busybox}/bin/busybox";
          };
        }
      );

      formatter = forAllSystems (system: pkgs: pkgs.nixfmt-rfc-style);
    };
}
